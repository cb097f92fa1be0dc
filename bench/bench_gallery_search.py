#!/usr/bin/env python
"""Footage search latency: one query against a gallery of N stored detections.

A gallery of ``--detections`` synthetic detections (10 per frame, 3 cameras, unit
``--dim``-d embeddings scattered around one centre per synthetic identity, 20 detections
each, no preview pictures) is written through the gallery store library
and committed with each ``--kinds`` index; then, with the gallery open (as `serve` holds it),
``--queries`` queries each ask for the top 50: unfiltered, and filtered to one camera and a
time window. Also timed: opening the gallery (tables + index from disk), and the whole
``cli.py search --hit`` command (a fresh process: imports, opening, ranking, writing the
three result files). Approximate kinds report their recall@50 against the exact answer.

    python bench/bench_gallery_search.py --detections 1000000 --record
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.footage.ranking import SearchFilter, find  # noqa: E402
from pipeline.footage.store import (FrameBlock, GalleryWriter, RunHeader,  # noqa: E402
                                    commit, open_gallery)
from pipeline.runtime.types import Detections, ModelInfo  # noqa: E402
from pipeline.arrays import l2_normalize  # noqa: E402

SECTION = "## Footage search latency"
PER_FRAME = 10
PER_IDENTITY = 20
NOISE = 0.75                  # noise norm relative to the unit centre
SEGMENT_FRAMES = 10_000
MODEL = ModelInfo("student", "bench.pt", "b" * 64)
TOP = 50


def write_gallery(directory: Path, detections: int, dim: int, seed: int = 0) -> None:
    """Synthetic frames of 3 cameras (1 frame/s each) with PER_FRAME detections each; each
    embedding is its identity's centre plus noise (cosine about 0.8 to the centre)."""
    g = np.random.default_rng(seed)
    centres = l2_normalize(g.standard_normal((max(1, detections // PER_IDENTITY), dim)))
    frames = detections // PER_FRAME
    w = GalleryWriter(directory, RunHeader(MODEL, dim, 0.5))
    for start in range(0, frames, SEGMENT_FRAMES):
        n = min(SEGMENT_FRAMES, frames - start)
        idx = np.arange(start, start + n)
        t = n * PER_FRAME
        xy = g.uniform(0, [1800, 800], (t, 2)).astype(np.float32)
        w.add(FrameBlock(sources=[f"/footage/cam{i % 3 + 1}.mp4" for i in idx],
                         frames=idx // 3 * 25, times=(idx // 3).astype(np.float64),
                         cameras=[f"cam{i % 3 + 1}" for i in idx], widths=np.full(n, 1920),
                         heights=np.full(n, 1080), previews=[b""] * n,
                         detections=Detections(
                             np.arange(n + 1, dtype=np.int64) * PER_FRAME,
                             np.c_[xy, xy + [100, 250]].astype(np.float32),
                             g.uniform(0.5, 1, t).astype(np.float32),
                             l2_normalize(centres[g.integers(len(centres), size=t)]
                                          + NOISE * g.standard_normal((t, dim)) / np.sqrt(dim)))))
    w.close()


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(directory: Path, kind: str, queries: int, exact_answers=None) -> dict:
    start = time.perf_counter()
    commit(directory, RunHeader(MODEL, DIM, 0.5), index_kind=kind)
    build = time.perf_counter() - start
    start = time.perf_counter()
    gallery = open_gallery(directory)
    gallery.index()
    opened = time.perf_counter() - start
    qs = gallery.embeddings(np.random.default_rng(1).integers(gallery.num_detections,
                                                              size=queries))
    find(gallery, qs[0], TOP)  # warm-up
    answers = []
    plain = timed(lambda: answers.append([h.id for h in find(gallery, qs[len(answers)], TOP)]),
                  queries)
    span = float(np.nanmax(gallery.frame_time))
    window = SearchFilter(("cam2",), 0.25 * span, 0.5 * span)
    k = iter(range(queries))
    filtered = timed(lambda: find(gallery, qs[next(k)], TOP, window), queries)
    recall = None
    if exact_answers is not None:
        recall = float(np.mean([len(set(a) & set(b)) / TOP
                                for a, b in zip(answers, exact_answers)]))
    return {"kind": kind, "build": build, "open": opened,
            "median": float(np.median(plain)), "p90": float(np.percentile(plain, 90)),
            "filtered": float(np.median(filtered)), "recall": recall, "answers": answers}


def cli_search(directory: Path) -> float:
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--gallery", str(directory),
                    "--hit", "12345", "--out", str(out)], check=True, capture_output=True)
    return time.perf_counter() - start


def table(rows: list[dict], detections: int) -> str:
    lines = [f"| detections | dim | index | build s | open s | query median ms | query p90 ms "
             f"| camera + time window ms | recall@{TOP} | `cli.py search --hit` s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recall = "exact" if r["recall"] is None else f"{r['recall']:.3f}"
        cli = f"{r['cli']:.1f}" if r.get("cli") else "-"
        lines.append(f"| {detections:,} | {DIM} | {r['kind']} | {r['build']:.1f} | "
                     f"{r['open']:.1f} | {1000 * r['median']:.0f} | {1000 * r['p90']:.0f} | "
                     f"{1000 * r['filtered']:.0f} | {recall} | {cli} |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import faiss
    return (f"{model}, {os.cpu_count()} cores visible, FAISS {faiss.__version__} with "
            f"{faiss.omp_get_max_threads()} threads")


def record(target: Path, text: str) -> None:
    """Append under SECTION (created at the end when missing)."""
    old = target.read_text() if target.is_file() else ""
    start = old.find(SECTION)
    if start < 0:
        target.write_text(old.rstrip("\n") + f"\n\n{SECTION}\n\n{text}")
        return
    end = old.find("\n## ", start + len(SECTION))
    end = len(old) if end < 0 else end + 1
    target.write_text(old[:end].rstrip("\n") + "\n\n" + text + ("\n" + old[end:]
                                                                 if end < len(old) else ""))


DIM = 256


def main(argv=None):
    global DIM
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--kinds", default="flat", help="comma-separated: flat, ivf, hnsw")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--dir", default=None, help="gallery folder (default: a temporary one)")
    ap.add_argument("--record", action="store_true", help="append to BENCHMARKS.md")
    args = ap.parse_args(argv)
    DIM = args.dim
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-gallery-")) / "gallery"
    start = time.perf_counter()
    write_gallery(directory, args.detections, DIM)
    print(f"wrote {args.detections:,} detections in {time.perf_counter() - start:.1f} s",
          flush=True)
    rows, exact = [], None
    for kind in args.kinds.split(","):
        row = measure(directory, kind, args.queries, None if kind == "flat" else exact)
        if kind == "flat":
            exact = row["answers"]
            row["cli"] = cli_search(directory)
        rows.append(row)
        print(table(rows[-1:], args.detections).splitlines()[-1], flush=True)
    text = table(rows, args.detections)
    print(text)
    if args.record:
        stamp = datetime.date.today().isoformat()
        record(ROOT / "BENCHMARKS.md",
               f"- machine: {machine()}\n- command: `python {' '.join(sys.argv)}`\n"
               f"- date: {stamp}\n\n{text}\n")


if __name__ == "__main__":
    main()
