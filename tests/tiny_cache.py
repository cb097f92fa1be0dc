"""A tiny teacher cache of random (but valid) teacher outputs, written with cache/'s own writer,
and a tiny PRW-format world to go with it. For the student tests: no teacher is trained."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cache import CacheWriter, split_fingerprint
from pipeline.data.records import UNLABELED, ImageRecord, QueryRecord

PROPOSALS = 12
JITTER = 2


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _boxes(rng, n, width, height):
    w = rng.uniform(16, 30, n)
    h = rng.uniform(30, 50, n)
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    return np.stack([x, y, x + w, y + h], 1).astype(np.float32)


def tiny_entry(record: ImageRecord, rng, dim: int, *, flip=True, proposals=True, jitter=True):
    n = len(record.boxes)
    p = PROPOSALS if proposals else 0
    props = _boxes(rng, p, record.width, record.height)
    jit = (np.repeat(record.boxes, JITTER, 0) + rng.uniform(-2, 2, (n * JITTER, 4))
           ).astype(np.float32) if jitter else np.zeros((0, 4), np.float32)
    entry = {"gt_boxes": record.boxes.astype(np.float32), "gt_pids": record.pids,
             "proposal_boxes": props, "jitter_boxes": jit,
             "jitter_pids": np.repeat(record.pids, JITTER) if jitter else np.zeros(0, np.int64),
             "views": {}}
    for view in ("orig", "flip") if flip else ("orig",):
        # the flip view holds other values (its own boxes too), so a wrong view is detectable
        entry["views"][view] = {
            "gt_features": _unit(rng, n, dim),
            "proposal_logits": rng.standard_normal((p, 2)).astype(np.float32),
            "proposal_refined_boxes": props + rng.uniform(-3, 3, props.shape).astype(np.float32),
            "proposal_features": _unit(rng, p, dim),
            "jitter_features": _unit(rng, len(jit), dim)}
    return entry


def write_tiny_cache(records, path, *, dataset="prw", flip=True, proposals=True, jitter=True,
                     dim=16, seed=0, fingerprint_records=None) -> Path:
    """A finalized cache over ``records``; ``fingerprint_records`` fakes another split."""
    rng = np.random.default_rng(seed)
    attrs = dict(dataset=dataset,
                 split_fingerprint=split_fingerprint(fingerprint_records or records),
                 detector_fingerprint="tiny-detector", reid_fingerprint="tiny-reid",
                 config_fingerprint=f"tiny-{flip}-{proposals}-{jitter}",
                 proposals_per_image=PROPOSALS if proposals else 0,
                 jitter_per_box=JITTER if jitter else 0)
    writer = CacheWriter(path, names=[r.name for r in records],
                         widths=[r.width for r in records], heights=[r.height for r in records],
                         embedding_dim=dim, attrs=attrs, has_flip=flip)
    for r in records:
        writer.append(tiny_entry(r, rng, dim, flip=flip, proposals=proposals, jitter=jitter))
    return writer.finalize()


def write_tiny_prw(root: Path, *, n_train=6, n_test=2, width=128, height=96, seed=0) -> Path:
    """A PRW-format world of noise images with 2-3 persons each (the real on-disk layout)."""
    from pipeline.data.prw import write_prw_annotations
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "frames").mkdir(parents=True, exist_ok=True)

    def record(i, cam, pids):
        name = f"c{cam}s1_{i:06d}.jpg"
        path = root / "frames" / name
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        boxes = np.array([[4 + 40 * k, 8, 34 + 40 * k, 80] for k in range(len(pids))], np.float32)
        return ImageRecord(name, path, width, height, boxes, np.array(pids, np.int64), cam)

    ids = [3, 7, 932]
    train = [record(i, 1 + i % 3, [ids[i % 3], ids[(i + 1) % 3], UNLABELED][: 2 + i % 2])
             for i in range(n_train)]
    test = [record(100 + i, 4 + i % 2, [40, UNLABELED]) for i in range(n_test)]
    queries = [QueryRecord(test[0].name, test[0].boxes[0], 40, test[0].camera)]
    write_prw_annotations(root, train, test, queries)
    return root
