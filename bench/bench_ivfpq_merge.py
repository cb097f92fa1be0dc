#!/usr/bin/env python
"""`gallery merge` of ivfpq shards: on disk (one shared training, codes copied) against the
retraining merge (every detection sampled, trained on and encoded again).

``--shards`` galleries of ``--detections`` synthetic detections each (the Re-ID-like
embeddings of ``bench_gallery_search.py``, different frames per shard) are committed with an
ivfpq index: the first trains, the others share its training (``index --ivfpq-trained``).
Then they are merged twice, without tracks (the index alone): on disk (``gallery merge``) and
with ``--retrain`` (what every merge of ivfpq galleries did before). Prints a table.

    nice -n 19 python bench/bench_ivfpq_merge.py --detections 200000 --shards 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_gallery_search import MODEL, PER_FRAME, write_gallery  # noqa: E402
from pipeline.footage.ranking import find  # noqa: E402
from pipeline.footage.store import (RunHeader, commit, merge_galleries,  # noqa: E402
                                    open_gallery, shared_training)


def seconds(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``: CPU (every thread's) also reads true on a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_shards(base: Path, shards: int, detections: int, dim: int) -> tuple[list[Path], list]:
    """The shard galleries and each one's commit seconds (the first one's includes training)."""
    paths, took = [], []
    header = RunHeader(MODEL, dim, 0.5)
    for k in range(shards):
        path = base / f"shard-{k + 1}"
        write_gallery(path, detections, dim, seed=k, first_frame=k * detections // PER_FRAME)
        training = shared_training(path, paths[0], header) if paths else None
        took.append(seconds(lambda: commit(path, header, index_kind="ivfpq",
                                           training=training)))
        paths.append(path)
    return paths, took


def _cell(took: tuple[float, float]) -> str:
    return f"{took[0]:.1f} ({took[1]:.1f})"


def same_answers(a: Path, b: Path, queries: int = 20) -> float:
    """The share of top-50 ids the two merged galleries agree on (the trainings differ)."""
    ga, gb = open_gallery(a), open_gallery(b)
    rows = np.random.default_rng(1).integers(ga.num_detections, size=queries)
    agree = [len({h.id for h in find(ga, q, 50)} & {h.id for h in find(gb, q, 50)}) / 50
             for q in ga.embeddings(rows)]
    return float(np.mean(agree))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, default=200_000, help="per shard")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=ROOT / "work" if (ROOT / "work").is_dir() else None) \
            as tmp:
        base = Path(tmp)
        shards, commits = make_shards(base, args.shards, args.detections, args.dim)
        on_disk = seconds(lambda: merge_galleries(base / "merged", shards))
        retrained = seconds(lambda: merge_galleries(base / "retrained", shards, retrain=True))
        agree = same_answers(base / "merged", base / "retrained")
    print(f"| shards x detections | shard commits, first trains: wall s (CPU s) | merge on disk "
          f"| merge --retrain | speed-up (CPU) | top-50 agreement |\n|---|---|---|---|---|---|\n"
          f"| {args.shards} x {args.detections:,} | {' / '.join(map(_cell, commits))} | "
          f"{_cell(on_disk)} | {_cell(retrained)} | {retrained[1] / on_disk[1]:.0f}x | "
          f"{agree:.3f} |")


if __name__ == "__main__":
    main()
