"""A PRW-sized world on disk for timing ``cli.py evaluate --results`` as a user runs it.

The released PRW's sizes: 5,704 training and 6,112 test frames of 1920x1080, 2,057 queries;
81,915 gallery detections (a model's output on the test frames). Annotation boxes are written
the way the release holds them: [pid, x, y, w, h] rows of float64 with one or two decimals
(so x + w is often a whole number that float64 cannot hold exactly) and a few slightly negative
x, y. Every frame is a hard link to one JPEG (the reader only opens headers). Embeddings are an
identity prototype plus noise (D=256), so mAP lands where trained models land (~0.75).

    world = write_prw_sized(Path("work/bench-eval/prw-sized"))   # -> (root, results path)
The same seed gives the same files; an existing complete world is reused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from pipeline.benchmark.results_file import write_results
from pipeline.runtime.types import Detections

TRAIN_FRAMES, TEST_FRAMES, QUERIES, DETECTIONS = 5_704, 6_112, 2_057, 81_915
TEST_IDENTITIES, CAMERAS, WIDTH, HEIGHT, DIM = 450, 6, 1920, 1080, 256
DONE = "world.json"


def frame_names(count: int, offset: int) -> list[str]:
    return [f"c{1 + (i % CAMERAS)}s1_{offset + i:06d}" for i in range(count)]


def decimal_boxes(rng, n: int) -> np.ndarray:
    """(n,4) x, y, w, h like the release's: one or two decimals, a few x, y slightly below 0."""
    w = np.round(rng.uniform(30, 180, n), rng.choice([1, 2]))
    h = np.round(w * rng.uniform(1.8, 3.0, n), 2)
    x = np.round(rng.uniform(-2, WIDTH - w - 1), 1)
    y = np.round(rng.uniform(-2, HEIGHT - h - 1), 2)
    return np.c_[x, y, w, h]


def plan(rng) -> dict:
    """Per test frame: xywh (N,4) float64, pids (N,) (-2 = unlabeled); queries."""
    frames = []
    for i in range(TEST_FRAMES):
        n = int(rng.integers(1, 7))
        pids = np.where(rng.random(n) < 0.7, rng.integers(1, TEST_IDENTITIES + 1, n), -2)
        keep = np.array([pids[j] < 0 or pids[j] not in pids[:j] for j in range(n)], bool)
        frames.append((decimal_boxes(rng, n)[keep], pids[keep]))
    labeled = [(f, j) for f, (_, pids) in enumerate(frames) for j in np.nonzero(pids > 0)[0]]
    picks = rng.choice(len(labeled), QUERIES, replace=False)
    return {"frames": frames, "queries": [labeled[k] for k in np.sort(picks)]}


def write_prw_sized(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write (or reuse) the dataset under root/data and its results file root/results.h5."""
    root = Path(root)
    data_root, results = root / "data", root / "results.h5"
    if (root / DONE).is_file() and json.loads((root / DONE).read_text()).get("seed") == seed:
        return data_root, results
    rng = np.random.default_rng(seed)
    world = plan(rng)
    test, train = frame_names(TEST_FRAMES, 0), frame_names(TRAIN_FRAMES, TEST_FRAMES)
    _write_frames(data_root, test + train)
    ann = data_root / "annotations"
    for name, (xywh, pids) in zip(test, world["frames"]):
        scipy.io.savemat(ann / f"{name}.jpg.mat", {"box_new": np.c_[pids, xywh]})
    for name in train:
        scipy.io.savemat(ann / f"{name}.jpg.mat",
                         {"box_new": np.c_[rng.integers(1, 480, 2), decimal_boxes(rng, 2)]})
    _write_lists(data_root, test, train, world)
    _write_results(results, rng, test, world)
    (root / DONE).write_text(json.dumps({"seed": seed}))
    return data_root, results


def _write_frames(data_root: Path, names: list[str]):
    frames = data_root / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    (data_root / "annotations").mkdir(exist_ok=True)
    one = data_root / "frame.jpg"
    Image.new("RGB", (WIDTH, HEIGHT), (90, 90, 90)).save(one, quality=50)
    for name in names:
        target = frames / f"{name}.jpg"
        if not target.exists():
            os.link(one, target)


def _write_lists(data_root: Path, test, train, world):
    cell = lambda names: np.array(names, dtype=object).reshape(-1, 1)
    scipy.io.savemat(data_root / "frame_test.mat", {"img_index_test": cell(test)})
    scipy.io.savemat(data_root / "frame_train.mat", {"img_index_train": cell(train)})
    scipy.io.savemat(data_root / "ID_test.mat",
                     {"ID_test2": np.arange(1, TEST_IDENTITIES + 1, dtype=np.float64)[None]})
    scipy.io.savemat(data_root / "ID_train.mat",
                     {"ID_train": np.arange(1, 480, dtype=np.float64)[None]})
    lines = []
    for f, j in world["queries"]:
        xywh, pids = world["frames"][f]
        x, y, w, h = (float(v) for v in xywh[j])
        lines.append(f"{int(pids[j])} {x!r} {y!r} {w!r} {h!r} {test[f]}\r\n")
    (data_root / "query_info.txt").write_text("".join(lines), newline="")


def _write_results(path: Path, rng, test, world):
    """Detections: every person jittered (some missed), plus false positives, 81,915 in all."""
    proto = rng.normal(size=(TEST_IDENTITIES + 1, DIM)).astype(np.float32)
    per_frame = []
    for xywh, pids in world["frames"]:
        corners = np.c_[xywh[:, :2].clip(0), xywh[:, :2].clip(0) + xywh[:, 2:]]
        found = rng.random(len(pids)) < 0.93
        size = np.tile(xywh[found, 2:], 2)          # jitter: many IoUs near 0.5
        per_frame.append((corners[found] + rng.normal(0, 1, size.shape) * 0.15 * size,
                          np.where(pids[found] > 0, pids[found], 0)))
    extra = DETECTIONS - sum(len(b) for b, _ in per_frame)
    where = np.bincount(rng.integers(0, TEST_FRAMES, extra), minlength=TEST_FRAMES)
    boxes, who, scores = [], [], []
    for (b, p), k in zip(per_frame, where):
        xy = rng.uniform(0, [WIDTH - 200, HEIGHT - 400], (k, 2))
        boxes.append(np.r_[b, np.c_[xy, xy + rng.uniform([30, 80], [180, 380], (k, 2))]])
        who.append(np.r_[p, np.full(k, -1)])
        scores.append(np.r_[rng.uniform(0.5, 1, len(p)), rng.uniform(0.05, 0.9, k)])
    who = np.concatenate(who)
    emb = np.where(who[:, None] > 0, proto[np.maximum(who, 0)], 0) \
        + rng.normal(0, 3.0, (len(who), DIM)).astype(np.float32)
    q_emb = np.stack([proto[world["frames"][f][1][j]] for f, j in world["queries"]]) \
        + rng.normal(0, 1.0, (QUERIES, DIM))
    q_boxes = [np.r_[world["frames"][f][0][j, :2].clip(0),
                     world["frames"][f][0][j, :2].clip(0) + world["frames"][f][0][j, 2:]]
               for f, j in world["queries"]]
    gallery = Detections(np.r_[0, np.cumsum([len(b) for b in boxes])],
                         np.concatenate(boxes).astype(np.float32),
                         np.concatenate(scores).astype(np.float32), emb.astype(np.float32))
    write_results(path, "prw", [f"{n}.jpg" for n in test], gallery,
                  [f"{test[f]}.jpg" for f, _ in world["queries"]], np.array(q_boxes),
                  q_emb.astype(np.float32))
