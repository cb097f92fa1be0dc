#!/usr/bin/env python
"""Search-evaluation speed: the PRW-sized case as a user runs it, and where its time goes.

Default: the PRW-sized world of bench/prw_sized.py (6,112 test frames, 2,057 queries, 81,915
detections, annotation boxes with decimals) written once under --work. It times the whole
``cli.py evaluate --results`` command in a fresh process (--runs times: best and median wall,
CPU seconds, the machine's load average), then the same work in this process phase by phase:
imports (in a fresh process), reading the dataset, reading the results file, building the
protocols, FAISS similarities, the scoring bookkeeping, detection AP, and CBGM on top. The
per-query reference (reference.py) runs on --ref-queries queries, must give identical numbers,
and its time is extrapolated to all queries for the speed-up.

    python bench/bench_eval.py                      # the PRW-sized case
    python bench/bench_eval.py --record             # ... appended to BENCHMARKS.md
    python bench/bench_eval.py --scaling [--quick]  # fast path vs reference by gallery size
(``--scaling`` is the earlier table: 10k, 100k, 1M boxes x 2,000 queries on grid embeddings.)
Each table is appended with the machine, command and date to its BENCHMARKS.md section.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline.data import read_dataset  # noqa: E402
from pipeline.data.records import ImageRecord, PersonSearchData, QueryRecord  # noqa: E402
from pipeline.benchmark.evaluator import SearchEvaluator  # noqa: E402
from pipeline.benchmark.reference import reference_evaluate  # noqa: E402
from pipeline.benchmark.results_file import SearchResults, read_results  # noqa: E402
from pipeline.runtime.types import Detections  # noqa: E402
from prw_sized import write_prw_sized  # noqa: E402

PRW_SECTION = "## Evaluation speed: the PRW-sized case"
SCALING_SECTION = "## Evaluation speed"
IMPORTS = {"imports: cli.py (fresh process)": "import cli",
           "imports: the evaluation's modules only (fresh process)":
           "from pipeline.data import read_dataset; from pipeline.benchmark import command"}


# ------------------------------------------------------------------ the PRW-sized case

EVALUATION_ONLY = ("import sys; from pipeline.data import read_dataset; "
                   "from pipeline.benchmark.command import evaluate_command; "
                   "print(evaluate_command(read_dataset('prw', sys.argv[1], train=False), "
                   "sys.argv[2], gallery_size=None, multi_view=False, det_thresh=0.5, "
                   "index='flat')[0])")


def whole_command(data_root: Path, results: Path, runs: int, extra=(), cli=True) -> dict:
    """Wall and CPU seconds of ``cli.py evaluate --results`` in fresh processes (``cli=False``:
    the same evaluation from a script that imports only the evaluation's modules)."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "evaluate", "--dataset", "prw", "--root",
           str(data_root), "--results", str(results), *extra] if cli else \
        [sys.executable, "-c", EVALUATION_ONLY, str(data_root), str(results)]
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"best": min(walls), "median": statistics.median(walls), "cpu": min(cpus),
            "load": os.getloadavg()[0]}


def import_seconds(imports: str) -> float:
    code = f"import time; t = time.perf_counter(); {imports}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                         text=True)
    return float(out.stdout.split()[-1])


class Timed:
    """Wraps a bound method and adds up the seconds spent in it."""

    def __init__(self, obj, name):
        self.inner, self.seconds = getattr(obj, name), 0.0
        setattr(obj, name, self)

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def phases(data_root: Path, results_path: Path) -> tuple[dict, dict]:
    """Seconds per phase of one evaluation in this process, and the metrics."""
    t = {name: import_seconds(code) for name, code in IMPORTS.items()}
    t0 = time.perf_counter()
    data = read_dataset("prw", data_root, train=False)
    t["read the dataset (test split)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = read_results(results_path, data)
    t["read the results file"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = SearchEvaluator(data, progress=False)
    t["protocols (galleries, positives)"] = time.perf_counter() - t0
    ev.process(res)
    t0 = time.perf_counter()
    ev._prepare()
    faiss_time = Timed(ev._index, "similarities")
    detection = Timed(ev, "detection_metrics")
    out = ev.evaluate()
    total = time.perf_counter() - t0
    t["FAISS similarities"] = faiss_time.seconds
    t["scoring bookkeeping"] = total - faiss_time.seconds - detection.seconds
    t["detection AP"] = detection.seconds
    metrics = {"published": out.metrics, "out": out, "data": data, "results": res}
    ev_cbgm = SearchEvaluator(data, progress=False, cbgm=True)
    ev_cbgm.process(res)
    t0 = time.perf_counter()
    metrics["cbgm"] = ev_cbgm.evaluate().metrics
    t["CBGM (a whole second evaluation with it)"] = time.perf_counter() - t0
    ev_exact = SearchEvaluator(data, progress=False, boxes="exact")
    ev_exact.process(res)
    metrics["exact"] = ev_exact.evaluate().metrics
    return t, metrics


def reference_seconds(data, res, fast_ap, fast_rank, n: int) -> float:
    """Reference time for all queries, from its first n (numbers asserted identical)."""
    subset = PersonSearchData(data.dataset, data.root, [], data.gallery, data.queries[:n])
    part = SearchResults(res.gallery, res.query_boxes[:n], res.query_embeddings[:n])
    t0 = time.perf_counter()
    ref = reference_evaluate(subset, part)
    seconds = (time.perf_counter() - t0) * len(data.queries) / n
    assert [r["ap"] for r in ref] == fast_ap[:n].tolist(), "fast path != reference (AP)"
    assert [r["first_rank"] for r in ref] == fast_rank[:n].tolist(), "fast path != reference"
    return seconds


def prw_sized(args) -> str:
    data_root, results = write_prw_sized(Path(args.work))
    command = whole_command(data_root, results, args.runs)
    alone = whole_command(data_root, results, args.runs, cli=False)
    cbgm_command = whole_command(data_root, results, 1, ["--cbgm"])
    runs = [phases(data_root, results) for _ in range(args.runs)]     # shared machines: the best
    t = {name: min(r[0][name] for r in runs) for name in runs[0][0]}
    m = runs[-1][1]
    ref = min(reference_seconds(m["data"], m["results"], m["out"].ap, m["out"].first_rank,
                                args.ref_queries) for _ in range(2))
    lines = [f"Whole command `cli.py evaluate --dataset prw --results`: **{command['best']:.2f} s** "
             f"(best of {args.runs}; median {command['median']:.2f} s; {command['cpu']:.2f} CPU s; "
             f"load average {command['load']:.1f} on {os.cpu_count()} cores). With `--cbgm`: "
             f"{cbgm_command['best']:.2f} s. The same evaluation from a script importing only "
             f"the evaluation's modules (not cli.py's torch, models, training): "
             f"{alone['best']:.2f} s (median {alone['median']:.2f} s; {alone['cpu']:.2f} CPU s). "
             f"The per-query reference: {ref:.0f} s "
             f"(extrapolated from {args.ref_queries} queries, identical numbers): "
             f"{ref / command['best']:.0f}x the whole command.", "",
             f"| phase (one evaluation, in process; best of {args.runs}) | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.2f} |" for name, sec in t.items()]
    lines += ["", "| boxes | CBGM | mAP | top-1 | top-5 | top-10 |", "|---|---|---|---|---|---|"]
    for label, key, cbgm in (("whole pixels (default)", "published", "no"),
                             ("float (`--exact-boxes`)", "exact", "no"),
                             ("whole pixels", "cbgm", "yes")):
        mm = m[key]
        lines.append(f"| {label} | {cbgm} | {100 * mm['mAP']:.4f} | {100 * mm['top1']:.2f} | "
                     f"{100 * mm['top5']:.2f} | {100 * mm['top10']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ scaling with gallery size

BOXES_PER_FRAME, FRAMES_PER_PERSON, DIM, GRID = 10, 4, 256, 16


def make_world(num_boxes: int, num_queries: int, seed: int = 0):
    """-> (PersonSearchData, SearchResults): grid embeddings (every float32 dot product exact)."""
    rng = np.random.default_rng(seed)
    frames = max(num_boxes // BOXES_PER_FRAME, num_queries * FRAMES_PER_PERSON // 2)
    pids = np.full((frames, BOXES_PER_FRAME), -1, np.int64)
    for pid in range(num_queries):           # each person in FRAMES_PER_PERSON frames, slot 0..
        for f in rng.choice(frames, FRAMES_PER_PERSON, replace=False):
            pids[f, np.argmax(pids[f] == -1)] = pid
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
    gallery = Detections(np.arange(frames + 1, dtype=np.int64) * BOXES_PER_FRAME,
                         boxes.astype(np.float32), rng.uniform(0.3, 1, t).astype(np.float32), emb)
    res = SearchResults(gallery, np.array([q.box for q in queries], np.float32),
                        q_emb.astype(np.float32))
    return data, res


def run_size(num_boxes, num_queries, ref_queries):
    data, res = make_world(num_boxes, num_queries)
    t0 = time.perf_counter()
    ev = SearchEvaluator(data, progress=False)
    ev.process(res)
    out = ev.evaluate()
    fast = time.perf_counter() - t0
    row = {"boxes": len(res.gallery.scores), "frames": len(data.gallery), "queries": num_queries,
           "fast_s": fast, "mAP": out.metrics["mAP"], "top1": out.metrics["top1"]}
    if ref_queries:
        n = min(ref_queries, num_queries)
        ref_s = reference_seconds(data, res, out.ap, out.first_rank, n)
        row.update(ref_s=ref_s, ref_queries=n, speedup=ref_s / fast)
    return row


def scaling_table(rows) -> str:
    lines = ["| gallery boxes | frames | queries | fast path (s) | reference (s, extrapolated) "
             "| speed-up | identical | mAP | top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r['ref_s']:.1f} (from {r['ref_queries']} queries)" if "ref_s" in r else "-"
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        same = "yes" if "ref_s" in r else "-"
        lines.append(f"| {r['boxes']:,} | {r['frames']:,} | {r['queries']:,} | {r['fast_s']:.2f} "
                     f"| {ref} | {sp} | {same} | {100 * r['mAP']:.2f} | {100 * r['top1']:.2f} |")
    return "\n".join(lines)


def scaling(args) -> str:
    sizes = [2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    queries = args.queries or (200 if args.quick else 2000)
    rows = []
    for size in sizes:
        rows.append(run_size(size, queries, args.ref_queries if size <= args.ref_max_boxes else 0))
        print(scaling_table(rows[-1:]).splitlines()[-1], flush=True)
    return scaling_table(rows)


# ------------------------------------------------------------------ recording

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


def record(target: Path, section: str, run: str):
    """Append ``run`` at the end of ``section`` (created at the end of the file when missing)."""
    old = target.read_text() if target.is_file() else ""
    start = old.find(section + "\n")
    if start < 0:
        target.write_text(old.rstrip("\n") + f"\n\n{section}\n\n{run}")
        return
    end = old.find("\n## ", start + len(section))
    end = len(old) if end < 0 else end + 1
    head = old[:end].rstrip("\n") + "\n\n"
    target.write_text(head + run + ("\n" + old[end:] if end < len(old) else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "work" / "bench-eval" / "prw-sized"),
                    help="where the PRW-sized world is written (reused when complete)")
    ap.add_argument("--runs", type=int, default=3, help="whole-command runs")
    ap.add_argument("--scaling", action="store_true", help="the gallery-size table instead")
    ap.add_argument("--quick", action="store_true", help="scaling: small sizes, 200 queries")
    ap.add_argument("--sizes", default=None, help="scaling: comma-separated gallery box counts")
    ap.add_argument("--queries", type=int, default=None, help="scaling: number of queries")
    ap.add_argument("--ref-queries", type=int, default=None,
                    help="queries the reference runs on (PRW-sized: 10; scaling: 100; 0 = none)")
    ap.add_argument("--ref-max-boxes", type=int, default=100_000,
                    help="scaling: run the reference only up to this gallery size")
    ap.add_argument("--append", default=None, help="append the table to this markdown file")
    ap.add_argument("--record", action="store_true",
                    help="append the table to the repository's BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.ref_queries is None:
        args.ref_queries = 100 if args.scaling else 10
    text = scaling(args) if args.scaling else prw_sized(args)
    print(text)
    target = args.append or (str(ROOT / "BENCHMARKS.md") if args.record else None)
    if target:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        run = (f"Machine: {machine()}  \nCommand: `python {' '.join(sys.argv)}`  \n"
               f"Date: {stamp}\n\n{text}\n")
        record(Path(target), SCALING_SECTION if args.scaling else PRW_SECTION, run)


if __name__ == "__main__":
    main()
