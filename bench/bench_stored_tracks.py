#!/usr/bin/env python
"""What storing tracks costs and saves: a commit that links and pools them, a commit that adds
one camera (only that camera is linked again), and a search by appearance that reads them
against one that links the whole gallery first (before tracks were stored).

The gallery is written straight through the store: ``--cameras`` videos of ``--frames`` frames
at 4 fps, ``--people`` people walking across each (boxes a few pixels apart from frame to
frame, 128-d embeddings), so the numbers are the tracker's and the store's, not a model's.

    .venv/bin/python bench/bench_stored_tracks.py [--cameras 8] [--frames 1200] [--people 6]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.footage.appearances import (build_appearances, find_appearances,  # noqa: E402
                                          gallery_appearances)
from pipeline.footage.store import (FrameBlock, GalleryWriter, RunHeader, commit,  # noqa: E402
                                    open_gallery)
from pipeline.footage.track_store import make_track_table  # noqa: E402
from pipeline.footage.tracks import link_tracks  # noqa: E402
from pipeline.runtime.types import Detections, ModelInfo  # noqa: E402

DIM, FPS, CHUNK = 128, 4.0, 64
HEADER = RunHeader(ModelInfo("student", "bench.pt", "b" * 64), DIM, 0.5)


def camera_blocks(camera: int, frames: int, people: int) -> list[FrameBlock]:
    """One video's frames in chunks of CHUNK: ``people`` walkers, each crossing in 10 s."""
    g = np.random.default_rng(camera)
    looks = g.standard_normal((people, DIM)).astype(np.float32)
    blocks = []
    for first in range(0, frames, CHUNK):
        idx = np.arange(first, min(frames, first + CHUNK))
        x = (idx[:, None] * 3.0 + np.arange(people)[None] * 97.0) % 1200
        y = np.arange(people)[None].repeat(len(idx), 0) * 110.0 + 20
        boxes = np.stack([x, y, x + 40, y + 100], -1).reshape(-1, 4).astype(np.float32)
        emb = np.tile(looks, (len(idx), 1)) + 0.3 * g.standard_normal((len(boxes), DIM))
        n = len(idx)
        blocks.append(FrameBlock(
            [f"/bench/cam{camera}.mp4"] * n, idx, idx / FPS, [f"cam{camera}"] * n,
            np.full(n, 1280), np.full(n, 720), [b""] * n,
            Detections(np.arange(n + 1, dtype=np.int64) * people, boxes,
                       np.full(len(boxes), 0.9, np.float32), emb.astype(np.float32))))
    return blocks


def timed_commit(directory: Path, blocks: list[FrameBlock], tracks) -> float:
    w = GalleryWriter(directory, HEADER)
    for b in blocks:
        w.add(b)
    w.close()
    start = time.perf_counter()
    commit(directory, HEADER, tracks=tracks)
    return time.perf_counter() - start


def search_seconds(directory: Path, stored: bool, queries: int = 5) -> float:
    """Mean seconds of one search by appearance from a hit, the gallery opened each time."""
    start = time.perf_counter()
    for q in range(queries):
        g = open_gallery(directory)
        apps = (gallery_appearances(g) if stored else
                build_appearances(g, g.embeddings(np.arange(g.num_detections)), link_tracks(g)))
        find_appearances(g, apps, g.embeddings([q * 7])[0])
    return (time.perf_counter() - start) / queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--frames", type=int, default=1200)
    ap.add_argument("--people", type=int, default=6)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tracks-"))
    try:
        cams = [camera_blocks(c, args.frames, args.people) for c in range(args.cameras + 1)]
        everything = [b for c in cams[:-1] for b in c]
        bare = timed_commit(work / "bare", everything, None)
        linked = timed_commit(work / "g", everything, make_track_table)
        added = timed_commit(work / "g", cams[-1], make_track_table)
        g = open_gallery(work / "g")
        rows = [("commit without tracks", bare), ("commit linking every camera", linked),
                ("commit adding one camera", added),
                ("search, tracks linked at search time", search_seconds(work / "g", False)),
                ("search, stored tracks + their index", search_seconds(work / "g", True))]
        print(f"gallery: {g.num_detections:,} detections, {g.manifest.tracks.tracks:,} tracks, "
              f"{args.cameras + 1} cameras x {args.frames} frames; tracks file "
              f"{(work / 'g' / g.manifest.tracks.file).stat().st_size:,} bytes")
        print(f"{'step':<40} {'seconds':>8}")
        for name, seconds in rows:
            print(f"{name:<40} {seconds:8.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
