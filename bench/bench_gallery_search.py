#!/usr/bin/env python
"""Footage search latency: one query against a gallery of N stored detections.

A gallery of ``--detections`` synthetic detections (10 per frame, 3 cameras, unit
``--dim``-d embeddings scattered around one centre per synthetic identity, 20 detections
each, no preview pictures) is written through the gallery store library
and committed with each ``--kinds`` index; then, with the gallery open (as `serve` holds it),
``--queries`` queries each ask for the top 50: unfiltered, and filtered to one camera and a
time window. Also timed: opening the gallery (tables + index from disk), and the whole
``cli.py search --hit`` command (a fresh process: imports, opening, ranking, writing the
three result files). Approximate kinds report their recall@50 against the exact answer
(the flat kind's, so list flat first). Each kind is searched in a fresh process: its peak RSS is
the search's own. The last kind also times one commit of 10,000 new detections.

    python bench/bench_gallery_search.py --detections 1000000 --kinds flat,ivfpq --json OUT

``OUT``: ``{"rows": [{"kind", "detections", "build_s", "open_s", "query_median_ms",
"query_p90_ms", "filtered_ms", "recall_at_50", "cold_ms" (ivfpq: the re-scoring
file's pages dropped before each query), "peak_rss_gb", "index_bytes",
"commit_new_s" (last row), "cli_s" (flat)}]}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.footage.ranking import SearchFilter, find  # noqa: E402
from pipeline.runtime.faiss_index import search_index  # noqa: E402
from pipeline.footage.store import (FrameBlock, GalleryWriter, RunHeader,  # noqa: E402
                                    commit, open_gallery)
from pipeline.footage.store.manifest import SEGMENTS  # noqa: E402
from pipeline.footage.store.ondisk import FOLDER as IVFPQ_FOLDER  # noqa: E402
from pipeline.footage.store.ondisk import rescore_record  # noqa: E402
from pipeline.footage.store.reader import disk_usage  # noqa: E402
from pipeline.runtime.types import Detections, ModelInfo  # noqa: E402
from pipeline.arrays import l2_normalize  # noqa: E402

SECTION = "## Footage search latency"
PER_FRAME = 10
CAMERAS = 3
# Synthetic Re-ID embeddings as a trained model spreads them: people seen for many frames
# (PER_IDENTITY detections each), looking alike in groups (clothing: GROUP_SIZE identities
# share a group centre), shifted per camera (light, viewpoint), plus per-detection noise
# (pose, crop). Cosines: same person 0.6-0.8, same group 0.3-0.45, strangers about 0.
# ``--identity-size 20 --groups 1`` gives the old, structureless set (uniform strangers).
PER_IDENTITY = 200
GROUP_SIZE = 50
IDENTITY_SPREAD = 1.0         # identity offset from its group centre (norms, unit centre)
CAMERA_SHIFT = 0.3
NOISE = 0.6
SEGMENT_FRAMES = 10_000
MODEL = ModelInfo("student", "bench.pt", "b" * 64)
TOP = 50


def _unit(g, n: int, dim: int) -> np.ndarray:
    return l2_normalize(g.standard_normal((n, dim)).astype(np.float32))


def identity_centres(g, detections: int, dim: int, per_identity: int, group_size: int):
    """(I, D) identity centres: group centre + IDENTITY_SPREAD x a random direction."""
    ids = max(1, detections // per_identity)
    groups = _unit(g, max(1, ids // group_size), dim)
    if group_size <= 1:
        return groups
    return l2_normalize(groups[g.integers(len(groups), size=ids)]
                        + IDENTITY_SPREAD * _unit(g, ids, dim))


def embeddings_of(g, centres, shifts, cameras: np.ndarray) -> np.ndarray:
    t = len(cameras)
    who = g.integers(len(centres), size=t)
    x = centres[who] + CAMERA_SHIFT * shifts[cameras] + NOISE * _unit(g, t, centres.shape[1])
    return l2_normalize(x)


def write_gallery(directory: Path, detections: int, dim: int, seed: int = 0,
                  first_frame: int = 0, per_identity: int = PER_IDENTITY,
                  group_size: int = GROUP_SIZE) -> None:
    """Synthetic frames of CAMERAS cameras (1 frame/s each) with PER_FRAME detections each."""
    g = np.random.default_rng(seed)
    centres = identity_centres(g, detections, dim, per_identity, group_size)
    shifts = _unit(np.random.default_rng(99), CAMERAS, dim)   # the same cameras every call
    frames = detections // PER_FRAME
    w = GalleryWriter(directory, RunHeader(MODEL, dim, 0.5))
    for start in range(first_frame, first_frame + frames, SEGMENT_FRAMES):
        n = min(SEGMENT_FRAMES, first_frame + frames - start)
        idx = np.arange(start, start + n)
        t = n * PER_FRAME
        xy = g.uniform(0, [1800, 800], (t, 2)).astype(np.float32)
        cams = np.repeat(idx % CAMERAS, PER_FRAME)
        w.add(FrameBlock(sources=[f"/footage/cam{i % 3 + 1}.mp4" for i in idx],
                         frames=idx // 3 * 25, times=(idx // 3).astype(np.float64),
                         cameras=[f"cam{i % 3 + 1}" for i in idx], widths=np.full(n, 1920),
                         heights=np.full(n, 1080), previews=[b""] * n,
                         detections=Detections(
                             np.arange(n + 1, dtype=np.int64) * PER_FRAME,
                             np.c_[xy, xy + [100, 250]].astype(np.float32),
                             g.uniform(0.5, 1, t).astype(np.float32),
                             embeddings_of(g, centres, shifts, cams))))
    w.close()


def query_rows(detections: int, queries: int) -> np.ndarray:
    return np.random.default_rng(1).integers(detections, size=queries)


def exact_answers(directory: Path, queries: int) -> list[list[int]]:
    """The exact top-TOP ids of each query, streamed over the segments (no index, no RAM for
    the whole gallery): the ground truth of recall, flat or not."""
    gallery = open_gallery(directory)
    q = gallery.embeddings(query_rows(gallery.num_detections, queries))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    row = 0
    for seg in gallery.manifest.segments:
        with h5py.File(directory / SEGMENTS / seg.file, "r") as f:
            x = np.asarray(f["detections/embeddings"][()], np.float32)
        s = np.concatenate([best_s, q @ x.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(row, row + len(x)),
                                                    (len(q), len(x)))], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :TOP]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
        row += len(x)
    return best_i.tolist()


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def build(directory: Path, kind: str) -> float:
    start = time.perf_counter()
    commit(directory, RunHeader(MODEL, DIM, 0.5), index_kind=kind)
    return time.perf_counter() - start


def measure(directory: Path, queries: int) -> dict:
    """Open the committed gallery and time ``queries`` top-50 queries (run in a fresh process
    per kind, so that its peak RSS is the search's own)."""
    start = time.perf_counter()
    gallery = open_gallery(directory)
    gallery.index()
    opened = time.perf_counter() - start
    qs = gallery.embeddings(query_rows(gallery.num_detections, queries))
    find(gallery, qs[0], TOP)  # warm-up
    answers = []
    plain = timed(lambda: answers.append([h.id for h in find(gallery, qs[len(answers)], TOP)]),
                  queries)
    span = float(np.nanmax(gallery.frame_time))
    window = SearchFilter(("cam2",), 0.25 * span, 0.5 * span)
    k = iter(range(queries))
    filtered = timed(lambda: find(gallery, qs[next(k)], TOP, window), queries)
    return {"open": opened, "median": float(np.median(plain)), "cold": cold(gallery, qs),
            "sweep": sweep(gallery, qs),
            "p90": float(np.percentile(plain, 90)), "filtered": float(np.median(filtered)),
            "answers": answers, "peak_rss_gb": peak_rss_gb(),
            "index_bytes": disk_usage(directory, gallery.manifest)["index"]}


def cold(gallery, qs: np.ndarray) -> float | None:
    """ivfpq: median seconds of a query whose re-scoring rows are not in the page cache (the
    re-scoring file's cached pages dropped before each: POSIX_FADV_DONTNEED, that file only);
    None without a re-scoring file."""
    record = rescore_record(gallery.manifest)
    if record is None:
        return None
    path = gallery.directory / IVFPQ_FOLDER / record["file"]

    def drop_then_find(q):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        start = time.perf_counter()
        find(gallery, q, TOP)
        return time.perf_counter() - start
    return float(np.median([drop_then_find(q) for q in qs]))


def sweep(gallery, qs: np.ndarray) -> list[dict]:
    """ivfpq: answers and median latency at each (nprobe, re-scoring factor) of the grid."""
    if not gallery.rescored:
        return []
    ivf = faiss.extract_index_ivf(gallery.index())
    out = []
    for nprobe in SWEEP_NPROBE:
        ivf.nprobe = nprobe
        for factor in SWEEP_FACTORS:
            answers = []
            took = timed(lambda: answers.append(search_index(
                gallery.index(), qs[len(answers)], TOP, rescore=gallery.embeddings,
                rescore_factor=factor)[1].tolist()), len(qs))
            out.append({"nprobe": nprobe, "factor": factor, "answers": answers,
                        "median_ms": 1000 * float(np.median(took))})
    ivf.nprobe = gallery.manifest.index.params["nprobe"]
    return out


def peak_rss_gb() -> float:
    """This process's peak resident memory since its exec (VmHWM; getrusage's ru_maxrss
    would count the parent's memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20                          # kB
    return float("nan")


def measure_in_child(directory: Path, queries: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", str(directory),
                          "--queries", str(queries), "--dim", str(DIM)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit_new(directory: Path, detections: int, dim: int) -> float:
    """Seconds to commit ``detections`` new detections into the gallery (its kind kept)."""
    frames = open_gallery(directory).num_frames
    write_gallery(directory, detections, dim, seed=1, first_frame=frames)
    start = time.perf_counter()
    commit(directory, RunHeader(MODEL, dim, 0.5))
    return time.perf_counter() - start


def cli_search(directory: Path) -> float:
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "search", "--gallery", str(directory),
                    "--hit", "12345", "--out", str(out)], check=True, capture_output=True)
    return time.perf_counter() - start


def table(rows: list[dict]) -> str:
    lines = [f"| detections | dim | index | build s | open s | query median ms | query p90 ms "
             f"| camera + time window ms | recall@{TOP} | peak RSS GB | index MB "
             f"| commit of {NEW_DETECTIONS:,} s | `cli.py search --hit` s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cli = f"{r['cli_s']:.1f}" if r.get("cli_s") else "-"
        new = f"{r['commit_new_s']:.1f}" if r.get("commit_new_s") is not None else "-"
        lines.append(f"| {r['detections']:,} | {DIM} | {r['kind']} | {r['build_s']:.1f} | "
                     f"{r['open_s']:.1f} | {r['query_median_ms']:.0f} | {r['query_p90_ms']:.0f} | "
                     f"{r['filtered_ms']:.0f} | {r['recall_at_50']:.3f} | {r['peak_rss_gb']:.2f} | "
                     f"{r['index_bytes'] / 1e6:.0f} | {new} | {cli} |")
    return "\n".join(lines)


def recall(answers, exact) -> float:
    return float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(answers, exact)]))


def sweep_table(points: list[dict], exact) -> str:
    lines = [f"| nprobe | re-scored (x {TOP}) | recall@{TOP} | query median ms |",
             "|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['nprobe']} | {p['factor']} | {recall(p['answers'], exact):.3f} "
                     f"| {p['median_ms']:.1f} |")
    return "\n".join(lines)


def run_kind(directory: Path, kind: str, detections: int, queries: int, exact) -> dict:
    """One row of the JSON output (schema in the module docstring); ``exact`` (None: computed
    here once the gallery is committed) is a one-item list holding the exact answers."""
    built = build(directory, kind)
    if not exact:
        exact.append(exact_answers(directory, queries))
    exact = exact[0]
    m = measure_in_child(directory, queries)
    if m["sweep"]:
        print(sweep_table(m["sweep"], exact), flush=True)
    if m["cold"] is not None:
        print(f"query median with the re-scoring rows out of the page cache: "
              f"{1000 * m['cold']:.0f} ms", flush=True)
    return {"kind": kind, "detections": detections, "build_s": built, "open_s": m["open"],
            "query_median_ms": 1000 * m["median"], "query_p90_ms": 1000 * m["p90"],
            "filtered_ms": 1000 * m["filtered"], "recall_at_50": recall(m["answers"], exact),
            "cold_ms": None if m["cold"] is None else 1000 * m["cold"],
            "peak_rss_gb": m["peak_rss_gb"], "index_bytes": m["index_bytes"],
            "sweep": [dict(p, answers=None, recall_at_50=recall(p["answers"], exact))
                      for p in m["sweep"]]}


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
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
NEW_DETECTIONS = 10_000       # one commit into the full gallery, for the last kind
FLAT_MAX_BYTES = 4e9          # flat holds every float32 embedding in RAM
SWEEP_NPROBE = (16, 32, 64, 128)
SWEEP_FACTORS = (2, 3, 5, 10, 20)


def main(argv=None):
    global DIM
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--kinds", default="flat", help="comma-separated: flat, ivf, hnsw, ivfpq")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--identity-size", type=int, default=PER_IDENTITY,
                    help="detections per synthetic person")
    ap.add_argument("--group-size", type=int, default=GROUP_SIZE,
                    help="persons per look-alike group (1 = no groups)")
    ap.add_argument("--dir", default=None, help="gallery folder (default: a temporary one)")
    ap.add_argument("--written", action="store_true",
                    help="DIR/gallery already holds the uncommitted segments of an earlier "
                         "run's write (the same --detections, --dim and sizes): skip writing")
    ap.add_argument("--json", dest="json_out", default=None, help="write the rows to this file")
    ap.add_argument("--record", action="store_true", help="append to BENCHMARKS.md")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child's side
    args = ap.parse_args(argv)
    DIM = args.dim
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.queries)))
        return
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-gallery-")) / "gallery"
    start = time.perf_counter()
    if args.written:
        print(f"{directory}: written before, its pending segments are committed", flush=True)
    else:
        write_gallery(directory, args.detections, DIM, per_identity=args.identity_size,
                      group_size=args.group_size)
        print(f"wrote {args.detections:,} detections in {time.perf_counter() - start:.1f} s",
              flush=True)
    rows, exact = [], []
    for kind in args.kinds.split(","):
        if kind == "flat" and args.detections * DIM * 4 > FLAT_MAX_BYTES:
            print(f"flat skipped: {args.detections * DIM * 4 / 1e9:.0f} GB of float32 in RAM "
                  f"is more than {FLAT_MAX_BYTES / 1e9:.0f} GB on this shared machine "
                  "(recall is measured against a streamed exact search)", flush=True)
            continue
        row = run_kind(directory, kind, args.detections, args.queries, exact)
        if kind == "flat":
            row["cli_s"] = cli_search(directory)
        rows.append(row)
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    rows[-1]["commit_new_s"] = commit_new(directory, NEW_DETECTIONS, DIM)
    text = table(rows)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    if args.record:
        stamp = datetime.date.today().isoformat()
        record(ROOT / "BENCHMARKS.md",
               f"- machine: {machine()}\n- command: `python {' '.join(sys.argv)}`\n"
               f"- date: {stamp}\n\n{text}\n")


if __name__ == "__main__":
    main()
