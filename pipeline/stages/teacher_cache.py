"""Stage one, part two: run both trained teachers over every TRAINING image and write the cache.

Per image (all boxes x1, y1, x2, y2 in ORIGINAL pixels; the layout is :mod:`cache.schema`):

- proposals: the detector's final detections (score-sorted) cut to ``proposals_per_image``;
  when there are fewer, padded with the next-best RPN proposals (objectness order; they may
  overlap detections). Teacher logits and regressed boxes for them come from the box head
  (``score_given_boxes`` semantics, same backbone pass as the detection).
- jitter boxes: ``jitter_per_box`` random shifts/scales of every GT box with IoU >=
  ``jitter_min_iou``, stratified from about ``jitter_min_iou`` up to 1, drawn from
  ``default_rng([seed, image index])`` so a resumed build reproduces them exactly.
- Re-ID features (L2-normalised) of GT boxes, proposals and jitter boxes via
  ``crop_and_resize`` + the Re-ID teacher.
- flip view: the same on the horizontally flipped image at the mirrored boxes; refined boxes
  mirrored back to original coordinates.

Images are decoded ahead by DataLoader workers, several images go through each teacher
forward (bf16 autocast on CUDA), and a background thread writes entries through a bounded
queue. Under torchrun (WORLD_SIZE > 1) rank r takes images r::world into its own shard and
rank 0 merges the shards after a barrier.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou
from tqdm import tqdm

from cache.key import cache_attrs, cache_path
from cache.writer import CacheWriter, merge_shards
from pipeline.data import read_dataset
from pipeline.data.crops import crop_many
from pipeline.data.images import load_image
from pipeline.data.transforms import flip_boxes
from pipeline.engine import distributed as dist_utils
from pipeline.models.precision import autocast
from pipeline.models.teacher_detector import detect_and_score, score_given_boxes
from pipeline.models.teachers import load_detector, load_reid

QUEUE_BATCHES = 4         # batches of entries waiting for the writer thread
REID_CHUNK = 256          # crops per Re-ID forward
JITTER_TRIES = 64         # candidates drawn per jitter box


class _Images(Dataset):
    """(position, image (3,H,W) float [0,1]) for the given record indices."""

    def __init__(self, records, indices):
        self.records, self.indices = records, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        return k, load_image(self.records[self.indices[k]].path)


def _collate(batch):
    return [k for k, _ in batch], [im for _, im in batch]


# ------------------------------------------------------------------------------ jitter

def jitter_boxes(gt_boxes: np.ndarray, count: int, min_iou: float, rng: np.random.Generator,
                 width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(N*count, 4) jittered boxes and the index of their GT box.

    Copy k of a box aims at IoU level ``min_iou + (1 - min_iou) * (k + 0.5) / count``: random
    shifts (fraction of w, h) and log-scales of amplitude ~(1 - level); the first candidate
    with IoU >= min_iou is kept (the GT box itself when none is)."""
    boxes, owner = [], []
    for n, box in enumerate(np.asarray(gt_boxes, np.float64).reshape(-1, 4)):
        w, h = box[2] - box[0], box[3] - box[1]
        for k in range(count):
            level = min_iou + (1 - min_iou) * (k + 0.5) / count
            amp = 0.5 * (1.0 - level) + 0.01
            u = rng.uniform(-amp, amp, (JITTER_TRIES, 4))
            cx = (box[0] + box[2]) / 2 + u[:, 0] * w
            cy = (box[1] + box[3]) / 2 + u[:, 1] * h
            cw, ch = w * np.exp(u[:, 2]), h * np.exp(u[:, 3])
            cand = np.stack([cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2], 1)
            cand[:, 0::2] = cand[:, 0::2].clip(0, width)
            cand[:, 1::2] = cand[:, 1::2].clip(0, height)
            iou = box_iou(torch.from_numpy(cand), torch.from_numpy(box[None])).numpy()[:, 0]
            ok = np.flatnonzero(iou >= min_iou)
            boxes.append(cand[ok[0]] if len(ok) else box)
            owner.append(n)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(owner, np.int64)


# ------------------------------------------------------------------------------ teachers

def _embed(reid, images, boxes_per_image, size) -> torch.Tensor:
    crops = crop_many(images, boxes_per_image, size)
    if len(crops) == 0:
        return torch.zeros((0, reid.embedding_dim))
    return torch.cat([reid.embed(c).float() for c in crops.split(REID_CHUNK)]).cpu()


def _mirror(boxes_per_image, widths) -> list[torch.Tensor]:
    """Boxes of each image mirrored into its horizontally flipped image."""
    return [flip_boxes(b, w) for b, w in zip(boxes_per_image, widths)]


def _split(t: torch.Tensor, counts) -> list[np.ndarray]:
    return [x.float().cpu().numpy() for x in t.split(list(counts))]


@torch.no_grad()
def teacher_entries(detector, reid, images, records, indices, cache_cfg) -> list[dict]:
    """Cache entries (CacheWriter.append format) for a batch of images on the teachers'
    device. ``indices``: the images' positions in the training split (jitter seeds)."""
    device = images[0].device
    size = tuple(reid.model_args[k] for k in ("crop_height", "crop_width"))
    gts, jits, jpids = [], [], []
    for rec, idx in zip(records, indices):
        gt = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        rng = np.random.default_rng([int(cache_cfg.seed), int(idx)])
        jb, owner = jitter_boxes(gt, cache_cfg.jitter_per_box, cache_cfg.jitter_min_iou, rng,
                                 rec.width, rec.height)
        gts.append(torch.from_numpy(gt).to(device))
        jits.append(torch.from_numpy(jb).to(device))
        jpids.append(np.asarray(rec.pids, np.int64)[owner])
    det = detect_and_score(detector, images, cache_cfg.proposals_per_image)
    props = [d["proposal_boxes"] for d in det]
    views = {"orig": _view(reid, images, gts, props, jits, size)}
    views["orig"]["proposal_logits"] = [d["proposal_logits"].float().cpu().numpy() for d in det]
    views["orig"]["proposal_refined_boxes"] = [d["proposal_refined_boxes"].float().cpu().numpy()
                                               for d in det]
    if cache_cfg.flip:
        fl_images = [im.flip(-1) for im in images]
        widths = [im.shape[-1] for im in images]
        fl_props = _mirror(props, widths)
        logits, refined = score_given_boxes(detector, fl_images, fl_props)
        counts = [len(p) for p in props]
        flip = _view(reid, fl_images, _mirror(gts, widths), fl_props, _mirror(jits, widths),
                     size)
        flip["proposal_logits"] = _split(logits, counts)
        flip["proposal_refined_boxes"] = [flip_boxes(torch.from_numpy(r), w).numpy() for r, w in
                                          zip(_split(refined, counts), widths)]
        views["flip"] = flip
    entries = []
    for i, rec in enumerate(records):
        entries.append({"gt_boxes": gts[i].cpu().numpy(),
                        "gt_pids": np.asarray(rec.pids, np.int64),
                        "proposal_boxes": props[i].float().cpu().numpy(),
                        "jitter_boxes": jits[i].cpu().numpy(), "jitter_pids": jpids[i],
                        "views": {v: {k: vals[i] for k, vals in d.items()}
                                  for v, d in views.items()}})
    return entries


def _view(reid, images, gts, props, jits, size) -> dict:
    """Re-ID features of GT, proposal and jitter boxes on one view (lists per image)."""
    n = len(images)
    feats = _embed(reid, [*images, *images, *images], [*gts, *props, *jits], size)
    counts = [len(b) for b in [*gts, *props, *jits]]
    parts = _split(feats, counts)
    return {"gt_features": parts[:n], "proposal_features": parts[n:2 * n],
            "jitter_features": parts[2 * n:]}


# ------------------------------------------------------------------------------ the build

def _writer_thread(writer: CacheWriter, q: queue.Queue, errors: list) -> threading.Thread:
    def run():
        while True:
            item = q.get()
            if item is None:
                return
            try:
                if not errors:
                    writer.append(item)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def build_cache(cfg, *, device: str | None = None, progress: bool = True,
                after_batch: Callable[[int], None] | None = None) -> Path:
    """Build (or resume, or just find) the cache of teacher config ``cfg``; returns its path.

    ``after_batch(images_done)`` is called after each batch is queued (tests interrupt
    builds with it)."""
    records = read_dataset(cfg.data.dataset, cfg.data.root).train
    final = cache_path(cfg, records)
    if final.is_file():
        return final
    dev, distributed = dist_utils.init_distributed(device or cfg.cache.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"cache device {dev} requested but CUDA is not available here")
    rank, world = dist_utils.rank(), dist_utils.world_size()
    attrs = cache_attrs(cfg, records)
    detector = load_detector(cfg.checkpoint("detector"), dev)
    reid = load_reid(cfg.checkpoint("reid"), dev)
    common = dict(embedding_dim=reid.embedding_dim, attrs=attrs, has_flip=cfg.cache.flip,
                  float16=cfg.cache.float16)
    mine = list(range(rank, len(records), world))
    target = final if world == 1 else final.with_name(f"{final.name}.shard{rank}.h5")
    if not target.is_file():
        _build_part(records, mine, target, detector, reid, cfg.cache, dev, common,
                    progress and rank == 0, after_batch)
    if world > 1:
        dist_utils.barrier()
        if rank == 0:
            shards = [final.with_name(f"{final.name}.shard{r}.h5") for r in range(world)]
            merge_shards(final, shards, names=[r.name for r in records],
                         widths=[r.width for r in records], heights=[r.height for r in records],
                         **common)
            for s in shards:
                s.unlink()
        dist_utils.barrier()
    return final


def _build_part(records, mine, target, detector, reid, cache_cfg, dev, common, progress,
                after_batch) -> Path:
    writer = CacheWriter(target, names=[records[i].name for i in mine],
                         widths=[records[i].width for i in mine],
                         heights=[records[i].height for i in mine], **common)
    start = writer.completed
    todo = mine[start:]
    loader = DataLoader(_Images(records, todo), batch_size=cache_cfg.batch_size,
                        num_workers=cache_cfg.workers, collate_fn=_collate,
                        pin_memory=dev.type == "cuda")
    q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * cache_cfg.batch_size)
    errors: list = []
    thread = _writer_thread(writer, q, errors)
    bar = tqdm(total=len(mine), initial=start, unit="img", desc=f"cache {target.name}",
               disable=not progress)
    done = start
    try:
        for ks, images in loader:
            idx = [todo[k] for k in ks]
            images = [im.to(dev, non_blocking=True) for im in images]
            with autocast(dev, cache_cfg.amp):
                entries = teacher_entries(detector, reid, images, [records[i] for i in idx],
                                          idx, cache_cfg)
            for e in entries:
                q.put(e)
            if errors:
                raise errors[0]
            done += len(entries)
            bar.update(len(entries))
            if after_batch is not None:
                after_batch(done)
    finally:
        q.put(None)
        thread.join()
        bar.close()
        if errors or done != len(mine):
            writer.close()  # flushed; a later build resumes from here
    if errors:
        raise errors[0]
    return writer.finalize()
