#!/usr/bin/env python
"""Evaluation speed vs gallery size (PRW-like protocol, synthetic random embeddings).

Gallery frames hold ~10 detections each; every query person appears in a few frames. Embeddings
lie on a coarse grid (multiples of 1/16, D=256) so every float32 dot product is exact and the
fast path and the per-query reference must give identical numbers (asserted). The reference is
run on the first ``--ref-queries`` queries where it is feasible; its time is extrapolated to all
queries for the speed-up. Prints a markdown table; ``--record`` (or ``--append FILE``) adds it
at the end of the "## Evaluation speed" section of BENCHMARKS.md with the machine, command and
date.

    python bench/bench_eval.py                 # 10k, 100k, 1M boxes x 2000 queries
    python bench/bench_eval.py --quick         # 2k, 20k boxes x 200 queries
    python bench/bench_eval.py --ref-queries 50 --ref-max-boxes 1000000 --record
(A gallery has at least queries * 2 frames, so every person fits: 2000 queries -> >= 40k boxes;
the table reports the real counts.)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.records import ImageRecord, PersonSearchData, QueryRecord  # noqa: E402
from pipeline.evaluation.evaluator import KeptDetections, SearchEvaluator  # noqa: E402
from pipeline.evaluation.reference import reference_search  # noqa: E402
from pipeline.gallery.results_file import SearchResults  # noqa: E402

BOXES_PER_FRAME = 10
FRAMES_PER_PERSON = 4
DIM = 256
GRID = 16
SECTION = "## Evaluation speed"


def make_world(num_boxes: int, num_queries: int, seed: int = 0):
    """-> (PersonSearchData, SearchResults) with num_boxes gallery detections."""
    rng = np.random.default_rng(seed)
    frames = max(num_boxes // BOXES_PER_FRAME, num_queries * FRAMES_PER_PERSON // 2)
    pids = np.full((frames, BOXES_PER_FRAME), -1, np.int64)
    for pid in range(num_queries):           # each person in FRAMES_PER_PERSON frames, slot 0..
        where = rng.choice(frames, FRAMES_PER_PERSON, replace=False)
        for f in where:
            slot = np.argmax(pids[f] == -1)
            pids[f, slot] = pid
    xy = rng.uniform(0, 1800, (frames, BOXES_PER_FRAME, 2)).astype(np.float32)
    wh = rng.uniform(20, 200, (frames, BOXES_PER_FRAME, 2)).astype(np.float32)
    gt = np.concatenate([xy, xy + wh], -1)
    gallery = [ImageRecord(f"f{i:07d}.jpg", Path("."), 1920, 1080, gt[i], pids[i], 1 + i % 6)
               for i in range(frames)]
    queries = []
    for pid in range(num_queries):
        f = int(np.nonzero((pids == pid).any(1))[0][0])
        queries.append(QueryRecord(gallery[f].name, gt[f][pids[f] == pid][0], pid,
                                   gallery[f].camera))
    data = PersonSearchData("prw", Path("."), [], gallery, queries)
    t = frames * BOXES_PER_FRAME
    boxes = (gt + rng.normal(0, 4, gt.shape)).astype(np.float32).reshape(t, 4)
    emb = np.empty((t, DIM), np.float32)
    for s in range(0, t, 100_000):
        emb[s:s + 100_000] = rng.integers(-GRID, GRID + 1, (min(100_000, t - s), DIM),
                                          dtype=np.int8) / GRID
    q_emb = rng.integers(-GRID, GRID + 1, (num_queries, DIM), dtype=np.int8) / GRID
    flat_pids = pids.ravel()
    pos = np.nonzero(flat_pids >= 0)[0]
    noise = rng.integers(-GRID, GRID + 1, (len(pos), DIM), dtype=np.int8) / GRID
    keep = rng.random((len(pos), DIM)) < 0.7           # positives resemble their query
    emb[pos] = np.where(keep, q_emb[flat_pids[pos]], noise)
    res = SearchResults(np.arange(frames + 1, dtype=np.int64) * BOXES_PER_FRAME, boxes,
                        rng.uniform(0.3, 1, t).astype(np.float32), emb,
                        np.array([q.box for q in queries]), q_emb.astype(np.float32))
    return data, res


def run_size(num_boxes, num_queries, ref_queries):
    data, res = make_world(num_boxes, num_queries)
    t0 = time.perf_counter()
    ev = SearchEvaluator(data, progress=False)
    ev.process(res)
    out = ev.evaluate()
    fast = time.perf_counter() - t0
    row = {"boxes": len(res.scores), "frames": len(data.gallery), "queries": num_queries,
           "fast_s": fast, "mAP": out.metrics["mAP"], "top1": out.metrics["top1"]}
    if ref_queries:
        n = min(ref_queries, num_queries)
        kept = KeptDetections.from_results(res, ev.det_thresh)
        split = [slice(a, b) for a, b in zip(kept.offsets[:-1], kept.offsets[1:])]
        b, e = [kept.boxes[s] for s in split], [kept.embeddings[s] for s in split]
        t0 = time.perf_counter()
        ref = reference_search(ev.protocols[:n], res.query_embeddings, b, e)
        ref_s = (time.perf_counter() - t0) * num_queries / n
        assert out.ap[:n].tolist() == [r["ap"] for r in ref], "fast path != reference (AP)"
        assert out.first_rank[:n].tolist() == [r["first_rank"] for r in ref], "ranks differ"
        row.update(ref_s=ref_s, ref_queries=n, speedup=ref_s / fast)
    return row


def table(rows) -> str:
    lines = ["| gallery boxes | frames | queries | fast path (s) | reference (s, extrapolated) "
             "| speed-up | identical | mAP | top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r['ref_s']:.1f} (from {r['ref_queries']} queries)" if "ref_s" in r else "-"
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        same = "yes" if "ref_s" in r else "-"
        lines.append(f"| {r['boxes']:,} | {r['frames']:,} | {r['queries']:,} | {r['fast_s']:.2f} "
                     f"| {ref} | {sp} | {same} | {100 * r['mAP']:.2f} | {100 * r['top1']:.2f} |")
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{model}, {os.cpu_count()} cores visible, OMP_NUM_THREADS={threads}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 200 queries")
    ap.add_argument("--sizes", default=None, help="comma-separated gallery box counts")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--ref-queries", type=int, default=100,
                    help="queries the reference runs on (0 = none)")
    ap.add_argument("--ref-max-boxes", type=int, default=100_000,
                    help="run the reference only up to this gallery size")
    ap.add_argument("--append", default=None, help="append the table to this markdown file")
    ap.add_argument("--record", action="store_true",
                    help="append the table to the repository's BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.record and not args.append:
        args.append = str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
    sizes = [2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    queries = args.queries or (200 if args.quick else 2000)
    rows = []
    for size in sizes:
        rows.append(run_size(size, queries, args.ref_queries if size <= args.ref_max_boxes else 0))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.append:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        run = (f"Machine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`  \n"
               f"Date: {stamp}\n\n{text}\n")
        record(Path(args.append), run)


def record(target: Path, run: str):
    """Append ``run`` at the end of the "## Evaluation speed" section (created when missing)."""
    old = target.read_text() if target.is_file() else ""
    start = old.find(SECTION)
    if start < 0:
        target.write_text(old + f"\n{SECTION}\n\n{run}")
        return
    end = old.find("\n## ", start + len(SECTION))
    end = len(old) if end < 0 else end + 1
    head = old[:end].rstrip("\n") + "\n\n"
    target.write_text(head + run + ("\n" + old[end:] if end < len(old) else ""))


if __name__ == "__main__":
    main()
