#!/usr/bin/env python
"""Student training throughput (images/s): no distillation, all terms from the teacher cache,
and all terms with the teacher run online every step (what the cache saves).

Each mode runs the real training pieces (the student's dataset and loader, ``student_step``, SGD)
for ``--warmup`` untimed steps and ``--steps`` timed ones; the time of a step includes waiting for
its batch. "online" loads the two teachers (this benchmark may import teacher code; the training
loop never does) and computes, per batch, exactly the targets the cache holds: the re-ID features
of the GT boxes, the detector's proposals with logits and refined boxes, the jittered boxes with
their features, on the flipped image where the batch image is flipped.

    .venv/bin/python bench/bench_student.py --config configs/synthetic/student-r18-all.yaml \
        --steps 6 --append BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.config.student import StudentConfig  # noqa: E402

TERMS = ("lut", "feature", "relation", "detector", "jitter")
NO_DISTILL = [f"distill.{t}.enabled=false" for t in TERMS]
#: --modes: none (no term), cache (the config's terms, targets from the cache), cache-extra (the
#: same with the cached boxes added to a full RoI batch), online (teachers run every step),
#: only-TERM (that one term, from the cache: what each term costs), cache-uncertainty (the
#: config's terms under the learned loss balance, distill.balance=uncertainty)
MODE_OVERRIDES = {"none": NO_DISTILL, "cache-extra": ["distill.roi_share=null"],
                  "cache-uncertainty": ["distill.balance=uncertainty"],
                  **{f"only-{t}": [o for o in NO_DISTILL if f".{t}." not in o] +
                     [f"distill.{t}.enabled=true"] for t in TERMS}}


def build(cfg: StudentConfig, *, use_cache: bool):
    """(model, loader, optimizer, cache_or_None, needs) with the training code's own pieces."""
    from pipeline.data import read_dataset
    from pipeline.distill.dataset import StudentDataset
    from pipeline.data.torch_dataset import collate_detection
    from pipeline.stages.student import (build_optimizer, cache_needs, open_checked_cache,
                                         seed_everything)
    from pipeline.engine.trainer import build_train_loader
    from pipeline.distill.student import build_student

    seed_everything(cfg.train.seed)
    data = read_dataset(cfg.data.dataset, cfg.data.root)
    needs = cache_needs(cfg)
    cache, path = None, None
    if needs.terms:
        cache, path, needs = open_checked_cache(cfg, data.train)
    table = cache.identity_table() if cache is not None and needs.teacher_table else None
    model = build_student(cfg.model, cfg.distill, data.train_identities(),
                          teacher_identity_table=table,
                          teacher_embedding_dim=cache.meta.embedding_dim if cache else None)
    keys = list(needs.keys) if use_cache else []
    dataset = StudentDataset(data.train, cache_path=path if keys else None, cache_keys=keys,
                             flip_prob=0.5 if cfg.data.flip else 0.0, seed=cfg.train.seed)
    loader = build_train_loader(dataset, batch_size=cfg.train.batch_size,
                                collate_fn=collate_detection, workers=cfg.data.workers,
                                seed=cfg.train.seed)
    return model, loader, build_optimizer(model, cfg.train), cache, needs


def batches(loader):
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


class ModeRunner:
    """One mode's model, loader and optimizer; ``step()`` runs and times one training step."""

    def __init__(self, cfg: StudentConfig, mode: str, device: torch.device):
        model, self.loader, self.optimizer, _, needs = build(
            cfg, use_cache=mode.startswith(("cache", "only-")))
        self.model = model.to(device).train()
        self.online = OnlineTeacher(cfg, needs, device) if mode == "online" else None
        self.mode, self.device, self.batches = mode, device, batches(self.loader)
        self.times: list[float] = []
        self.images = 0

    def step(self, timed: bool) -> None:
        from pipeline.stages.student import student_step
        t0 = time.perf_counter()
        batch = next(self.batches)
        if self.online is not None:
            batch = self.online.add_targets(batch)
        total = sum(student_step(self.model, batch, self.device).values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        float(total.detach())  # sync
        if timed:
            self.times.append(time.perf_counter() - t0)
            self.images += len(batch[0])

    def result(self) -> dict:
        return {"mode": self.mode, "images_per_s": self.images / sum(self.times),
                "s_per_step": sum(self.times) / len(self.times), "steps": len(self.times),
                "images": self.images}


def run_modes(cfgs: dict[str, StudentConfig], steps: int, warmup: int,
              device: torch.device) -> list[dict]:
    """Steps of the modes interleaved round-robin, so a change in the machine's load (shared
    machines) hits every mode alike."""
    runners = [ModeRunner(cfg, mode, device) for mode, cfg in cfgs.items()]
    for i in range(warmup + steps):
        for r in runners:
            r.step(timed=i >= warmup)
    return [r.result() for r in runners]


class OnlineTeacher:
    """Runs the teachers on each batch to produce the keys the cache would hold.

    The batch images are already flipped and resized, so the teachers' outputs are in the
    batch's frame (what the cache gives after the dataset's transforms). The detector scores
    ``proposals`` proposals per image; the re-ID teacher embeds the GT boxes and ``jitter`` jittered
    copies of each. Weights are random: the cost does not depend on them."""

    def __init__(self, cfg: StudentConfig, needs: dict, device: torch.device, *,
                 proposals: int = 64, jitter: int = 4, embedding_dim: int = 256):
        from pipeline.models.teacher_detector import TeacherDetector
        m = cfg.model
        self.detector = TeacherDetector(backbone="resnet50", min_size=m.min_size,
                                        max_size=m.max_size).to(device).eval()
        self.reid = _reid_teacher(embedding_dim, device)
        self.needs, self.device = needs, device
        self.proposals, self.jitter = proposals, jitter

    @torch.no_grad()
    def add_targets(self, batch):
        from pipeline.models.teacher_detector import detect_and_score
        images, targets = batch
        images = [im.to(self.device) for im in images]
        keys = set(self.needs.keys)
        if keys & {"proposal_boxes", "proposal_logits", "proposal_refined_boxes"}:
            for t, out in zip(targets, detect_and_score(self.detector, images, self.proposals)):
                for k in ("proposal_boxes", "proposal_logits", "proposal_refined_boxes"):
                    t[k] = out[k].float().cpu()
        for t, im in zip(targets, images):
            gt = t["boxes"].to(self.device)
            jit = gt.repeat_interleave(self.jitter, 0)
            if len(jit):
                wh = (jit[:, 2:] - jit[:, :2]).repeat(1, 2)
                jit = jit + 0.1 * wh * (torch.rand_like(jit) * 2 - 1)
            feats = self.reid(im, torch.cat([gt, jit]))
            if "gt_features" in keys:
                t["gt_features"] = feats[: len(gt)].float().cpu()
            if "jitter_features" in keys:
                t["jitter_boxes"] = jit.cpu()
                t["jitter_features"] = feats[len(gt):].float().cpu()
        return images, targets


def _reid_teacher(embedding_dim: int, device: torch.device):
    """(image, boxes) -> (N, D) unit features: the project's re-ID teacher when present, else a
    ResNet-50 on 256x128 crops (the usual re-ID input) with a D-dim head."""
    import torch.nn.functional as F
    import torchvision
    from torchvision.ops import roi_align
    try:
        from pipeline.models import teacher_reid as tr
        cls = getattr(tr, "TeacherReid", None) or getattr(tr, "TeacherReID")
        model = cls(backbone="resnet50", num_classes=1, embedding_dim=embedding_dim).to(device).eval()
        size = tuple(model.crop_size)

        def embed_teacher(image, boxes):
            if len(boxes) == 0:
                return image.new_zeros((0, embedding_dim))
            crops = roi_align(image[None], [boxes.float()], output_size=size, aligned=True)
            return model.embed(crops)
        print("online: the project's re-ID teacher (TeacherReid, resnet50)", flush=True)
        return embed_teacher
    except Exception as e:  # noqa: BLE001 - the teacher module is optional for this bench
        print(f"online: re-ID teacher unavailable ({type(e).__name__}: {e}); "
              "using a ResNet-50 crop embedder of the same shape", flush=True)
    net = torchvision.models.resnet50(weights=None)
    net.fc = torch.nn.Linear(net.fc.in_features, embedding_dim)
    net = net.to(device).eval()

    def embed(image, boxes):
        if len(boxes) == 0:
            return image.new_zeros((0, embedding_dim))
        crops = roi_align(image[None], [boxes.float()], output_size=(256, 128), aligned=True)
        return F.normalize(net(crops), dim=1)
    return embed


def tiny_world(out: Path, n_train: int, width: int, height: int) -> tuple[Path, Path]:
    """A PRW-format world of noise images and a cache of random teacher outputs (for a
    throughput measurement only: the numbers do not depend on what the pixels show)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_cache import write_tiny_cache, write_tiny_prw
    from pipeline.data import read_dataset
    root = out / "prw"
    if not (root / "query_info.txt").exists():
        write_tiny_prw(root, n_train=n_train, width=width, height=height)
    cache = out / "teacher.h5"
    if not cache.exists():
        data = read_dataset("prw", root)
        write_tiny_cache(data.train, cache, dim=256)
    return root, cache


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/synthetic/student-r18-all.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", default="none,cache,online")
    ap.add_argument("--append", help="append the table to this markdown file (BENCHMARKS.md)")
    ap.add_argument("--tiny-world", metavar="DIR",
                    help="train on a generated world of noise images (WxH from --size) with a "
                         "random-output cache in DIR instead of the config's data and cache")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--images", type=int, default=40)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    if args.tiny_world:
        w, h = (int(v) for v in args.size.split("x"))
        root, cache = tiny_world(Path(args.tiny_world), args.images, w, h)
        args.overrides += [f"data.root={root}", f"cache={cache}", "model.embedding_dim=256"]
    cfgs = {mode: load_config(args.config, StudentConfig,
                              [*args.overrides, *MODE_OVERRIDES.get(mode, []),
                               f"train.device={args.device}"])
            for mode in args.modes.split(",")}
    rows = run_modes(cfgs, args.steps, args.warmup, device)
    for r in rows:
        print(f"{r['mode']:12s} {r['images_per_s']:8.2f} images/s  {r['s_per_step']:7.2f} s/step",
              flush=True)
    cfg = cfgs[rows[0]["mode"]]
    labels = {"none": "no distillation",
              "cache": "all terms, targets from the cache (cached boxes share the RoI batch)",
              "cache-extra": "all terms from the cache, cached boxes on top of the RoI batch "
                             "(`distill.roi_share=null`)",
              "cache-uncertainty": "the config's terms from the cache, learned loss balance "
                                   "(`distill.balance=uncertainty`)",
              "online": "all terms, teacher run online every step",
              **{f"only-{t}": f"only the {t} term, from the cache" for t in TERMS}}
    table = ["| mode | images/s | s/step |", "|---|---|---|"]
    for r in rows:
        table.append(f"| {labels.get(r['mode'], r['mode'])} | {r['images_per_s']:.2f} "
                     f"| {r['s_per_step']:.2f} |")
    print("\n".join(table))
    if args.append:
        cmd = "python bench/bench_student.py " + " ".join(argv if argv is not None else sys.argv[1:])
        machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, " \
                  f"{platform.processor() or platform.platform()}, torch {torch.__version__}, " \
                  f"device {args.device}"
        text = (f"\n## Student training throughput\n\n`{cmd}` ({datetime.date.today()}; {machine}). "
                f"Batch {cfg.train.batch_size}, images {cfg.model.min_size}/{cfg.model.max_size}, "
                f"{cfg.model.backbone}; mean over {args.steps} steps after "
                f"{args.warmup} warm-up steps, the modes' steps interleaved; a step's time "
                f"includes waiting for its batch. "
                f"Load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
                f"(other jobs share this machine). "
                + (f"Data: {args.images} generated noise images of {args.size} with a "
                   f"random-output 256-d cache (speed does not depend on the pixels). "
                   if args.tiny_world else "")
                + ("Online: ResNet-50-FPN teacher detector (64 proposals scored per image) and "
                   "ResNet-50 re-ID teacher on the GT and 4 jittered boxes per person, random "
                   "weights, run on every batch. " if "online" in args.modes else "")
                + "\n\n"
                + "\n".join(table) + "\n")
        with open(args.append, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
