#!/usr/bin/env python
"""Teacher cache build speed: the pipelined build vs a plain one-image-at-a-time float32 loop.

Both run the same trained teachers (a teacher config's out_dir/detector.pt and reid.pt) over
the first --images training images and write a cache file:

- pipelined: ``cache.build`` as ``build-cache`` runs it: DataLoader workers decode ahead,
  ``cache.batch_size`` images per teacher forward, bf16 autocast on CUDA, background writer;
- naive: decode, run the teachers on one image in float32, append, repeat (same code for the
  teacher outputs, no workers, no batching, no writer thread, no autocast).

Prints a markdown table (images/s, bytes per image); --record appends it to BENCHMARKS.md
under "## Teacher cache build" with the machine, the command and the date.

    python bench/bench_cache.py --config configs/synthetic/teacher.yaml --images 24
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.stages.teacher_cache import _build_part, teacher_entries  # noqa: E402
from cache.key import cache_attrs  # noqa: E402
from cache.writer import CacheWriter  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.config.teacher import TeacherConfig  # noqa: E402
from pipeline.data import read_dataset  # noqa: E402
from pipeline.data.images import load_image  # noqa: E402
from pipeline.models.teachers import load_detector, load_reid  # noqa: E402

SECTION = "## Teacher cache build"


def machine(device: torch.device) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.machine())
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU"
    return (f"{gpu}; {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; "
            f"torch {torch.__version__}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def naive(records, path, det, reid, cache_cfg, device, common) -> float:
    writer = CacheWriter(path, names=[r.name for r in records],
                         widths=[r.width for r in records], heights=[r.height for r in records],
                         **common)
    start = time.perf_counter()
    for i, rec in enumerate(records):
        image = load_image(rec.path).to(device)
        for entry in teacher_entries(det, reid, [image], [rec], [i], cache_cfg):
            writer.append(entry)
    writer.finalize()
    _sync(device)
    return time.perf_counter() - start


def pipelined(records, path, det, reid, cache_cfg, device, common) -> float:
    start = time.perf_counter()
    _build_part(records, list(range(len(records))), path, det, reid, cache_cfg, device, common,
                False, None)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/synthetic/teacher.yaml")
    p.add_argument("--images", type=int, default=24, help="first N training images")
    p.add_argument("--device", default=None, help="default: the config's cache.device")
    p.add_argument("--batch-size", type=int, default=None, help="override cache.batch_size")
    p.add_argument("--workers", type=int, default=None, help="override cache.workers")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    cfg = load_config(args.config, TeacherConfig)
    over = {k: v for k, v in (("batch_size", args.batch_size), ("workers", args.workers))
            if v is not None}
    cache_cfg = dataclasses.replace(cfg.cache, **over)
    device = torch.device(args.device or cache_cfg.device)
    all_records = read_dataset(cfg.data.dataset, cfg.data.root).train
    records = all_records[:args.images]
    det = load_detector(cfg.checkpoint("detector"), device)
    reid = load_reid(cfg.checkpoint("reid"), device)
    common = dict(embedding_dim=reid.embedding_dim, attrs=cache_attrs(cfg, all_records),
                  has_flip=cache_cfg.flip, float16=cache_cfg.float16)
    naive_cfg = dataclasses.replace(cache_cfg, amp=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():  # warm-up: first-call costs stay out of both timings
            teacher_entries(det, reid, [load_image(records[0].path).to(device)], records[:1],
                            [0], naive_cfg)
        for name, fn, c in (("naive: 1 image per forward, float32, no workers", naive, naive_cfg),
                            (f"pipelined: {cache_cfg.batch_size} images per forward, "
                             f"{cache_cfg.workers} workers, writer thread"
                             + (", bf16" if device.type == "cuda" and cache_cfg.amp else ""),
                             pipelined, cache_cfg)):
            path = Path(tmp) / f"{fn.__name__}.h5"
            secs = fn(records, path, det, reid, c, device, common)
            rows.append((name, len(records) / secs, path.stat().st_size / len(records)))
            print(f"  {name}: {rows[-1][1]:.2f} images/s", flush=True)
    table = ["| mode | images/s | bytes per image |", "|---|---|---|"]
    table += [f"| {n} | {ips:.2f} | {b / 1e3:.1f} kB |" for n, ips, b in rows]
    text = "\n".join(table)
    print("\n" + text)
    if args.record:
        load = os.getloadavg()[0]
        note = (f"- machine: {machine(device)}; load average {load:.1f} while measuring\n"
                f"- command: `python bench/bench_cache.py {' '.join(sys.argv[1:])}`\n"
                f"- date: {datetime.date.today()}\n- {len(records)} training images of "
                f"{cfg.data.root}, teachers of {args.config}; proposals "
                f"{cache_cfg.proposals_per_image}, jitter {cache_cfg.jitter_per_box}/box, "
                f"flip view {cache_cfg.flip}, float16 {cache_cfg.float16}\n")
        bench_md = ROOT / "BENCHMARKS.md"
        text_md = bench_md.read_text()
        head = "" if SECTION in text_md else f"\n{SECTION}\n"
        with open(bench_md, "a") as f:
            f.write(f"{head}\n{note}\n{text}\n")


if __name__ == "__main__":
    main()
