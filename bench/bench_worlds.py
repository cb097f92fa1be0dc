#!/usr/bin/env python
"""Does distillation hold on worlds the tests never used? For each world (another seed, another
image size, the CUHK-SYSU format) this makes the world, trains the two teachers side by side
and builds their cache, then runs `cli.py ablate` for the R18 student without and with the
default distillation terms (configs/synthetic/student-r18-distilled.yaml) over two seeds, at the demo's budget (configs/synthetic/*, unchanged).
It prints one row per world (teacher, both students, the share of the teacher-student gap the
distilled student closes) and with ``--record`` appends the table to BENCHMARKS.md.

    .venv/bin/python bench/bench_worlds.py [--worlds seed1 size480 cuhk] [--seeds 0,1] [--record]

Everything lands under work/worlds/NAME/ and is reused by a second run (the ablation's runs are
keyed by their config).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "cli.py")]
WORLDS = {  # name -> (dataset, world seed, image size); the demo's world is prw, seed 0, 320x240
    "seed1": ("prw", 1, "320x240"),
    "size480": ("prw", 0, "480x360"),
    "cuhk": ("cuhk-sysu", 0, "320x240"),
}
TEACHER = ROOT / "configs/synthetic/teacher.yaml"
STUDENT = ROOT / "configs/synthetic/student-r18-distilled.yaml"


def write_configs(name: str) -> tuple[Path, Path]:
    """The world's teacher and student YAML: the synthetic configs with its data swapped in."""
    dataset, seed, size = WORLDS[name]
    folder = ROOT / "work/worlds" / name
    folder.mkdir(parents=True, exist_ok=True)
    data = (f"data:\n  dataset: {dataset}\n  root: {folder / 'data'}\n")
    teacher = folder / "teacher.yaml"
    teacher.write_text(f"_base_: {TEACHER}\n{data}  synthetic: {{seed: {seed}, size: {size}}}\n"
                       f"out_dir: {folder / 'teachers'}\n")
    student = folder / "student.yaml"
    student.write_text(f"_base_: {STUDENT}\n{data}teacher_config: {teacher}\n")
    return teacher, student


def run(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env)


def stage_one(name: str, teacher: Path) -> None:
    """Both teachers side by side (one core each, as make demo trains them), then the cache."""
    folder = teacher.parent
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // 2)))
    procs = [run(["train-teacher", "--part", part, "--config", str(teacher), "--no-progress"],
                 folder / f"teacher-{part}.log", env)
             for part in ("detector", "reid")
             if not (folder / "teachers" / f"{part}.pt").is_file()]
    for p in procs:
        if p.wait() != 0:
            sys.exit(f"{name}: a teacher failed; see {folder}/teacher-*.log")
    if run(["build-cache", "--config", str(teacher), "--no-progress"],
           folder / "cache.log").wait() != 0:
        sys.exit(f"{name}: build-cache failed; see {folder / 'cache.log'}")


def ablate(name: str, teacher: Path, student: Path, seeds: str) -> dict:
    out = teacher.parent / "ablation"
    args = ["ablate", "--config", str(student), "--out", str(out), "--variants", "none,all",
            "--seeds", seeds, "--jobs", "2", "--teacher", str(teacher)]
    if run(args, teacher.parent / "ablation.log").wait() != 0:
        sys.exit(f"{name}: ablate failed; see {teacher.parent / 'ablation.log'}")
    return json.loads((out / "ablation.json").read_text())


def world_row(name: str, result: dict) -> str:
    """teacher | none | all (search mAP / det AP, mean over seeds) | gaps closed."""
    t = result["teacher"]
    mean = {}
    for variant in ("none", "all"):
        runs = [r for r in result["runs"] if r["variant"] == variant]
        mean[variant] = {k: 100 * sum(r["search"][k] for r in runs) / len(runs)
                         for k in ("mAP", "det_ap")}
    gap = {k: (mean["all"][k] - mean["none"][k]) / (t[k] - mean["none"][k])
           for k in ("mAP", "det_ap")}
    dataset, seed, size = WORLDS[name]
    return (f"| {name} ({dataset}, seed {seed}, {size}) | {t['mAP']:.2f} / {t['det_ap']:.2f} | "
            f"{mean['none']['mAP']:.2f} / {mean['none']['det_ap']:.2f} | "
            f"{mean['all']['mAP']:.2f} / {mean['all']['det_ap']:.2f} | "
            f"{100 * gap['mAP']:.0f}% | {100 * gap['det_ap']:.0f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    ap.add_argument("--seeds", default="0,1", help="student seeds (train.seed), comma-separated")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    rows = []
    for name in args.worlds:
        start = time.time()
        teacher, student = write_configs(name)
        stage_one(name, teacher)
        rows.append(world_row(name, ablate(name, teacher, student, args.seeds)))
        print(rows[-1], f"({(time.time() - start) / 60:.1f} min)", flush=True)
    table = "\n".join(["| world | teacher mAP / det AP | R18 none | R18 distilled | "
                       "mAP gap closed | det AP gap closed |", "|---|---|---|---|---|---|", *rows])
    print(table)
    if args.record:
        command = "python bench/bench_worlds.py " + " ".join(sys.argv[1:])
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Distillation on other worlds\n\n- machine: {platform.processor() or platform.machine()}, "
                    f"{os.cpu_count()} cores, torch threads as `cli.py ablate --jobs 2` sets them\n"
                    f"- command: `{command}`\n- date: {datetime.date.today()}\n\n"
                    f"Means over student seeds {args.seeds}; search mAP / detection AP in percent.\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
