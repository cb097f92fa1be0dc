"""The real configs at real size: every stage on full-size (1920x1080) synthetic frames.

    .venv/bin/python bench/bench_fullsize.py [--device cpu|cuda] [--work DIR] [--record]

Writes a tiny PRW-format world of full-size frames (2 training + 2 test frames), then runs the
toolkit's own commands on it with the real configs (`configs/teacher/prw.yaml`,
`configs/student/prw-r50-all.yaml`) and only the overrides in FULLSIZE_TEACHER_SETS /
FULLSIZE_STUDENT_SETS: one epoch, no ImageNet download, the device, the batch sizes the tiny
world allows. Prints one table: wall time, CPU time and peak memory (the commands' own
"peak memory" line) per step. ``tests/test_fullsize.py`` runs the same steps (:func:`run_steps`)
as the suite's smoke test.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZE = "1920x1080"
# 4 identities over 4 frames: 2 training frames (2 identities) and 2 test frames (4 queries)
FULLSIZE_WORLD = ["--identities", "4", "--images", "4", "--seed", "0"]
TEACHER_CONFIG = {"prw": "configs/teacher/prw.yaml",
                  "cuhk-sysu": "configs/teacher/cuhk-sysu.yaml"}
STUDENT_CONFIG = {"prw": "configs/student/prw-r50-all.yaml",
                  "cuhk-sysu": "configs/student/cuhk-sysu-r50-all.yaml"}
# Everything else comes from the real configs: 900/1500 resize, ResNet-50(-FPN), 256x128 Re-ID
# crops, flip views, every distillation term, warm-up and schedules, float16 cache.
FULLSIZE_TEACHER_SETS = [
    "data.root={root}", "out_dir={work}/teachers", "cache.dir={work}/cache",
    "detector.pretrained=false", "reid.pretrained=false",   # never download in a test
    "detector.device={device}", "reid.device={device}", "cache.device={device}",
    "detector.epochs=1", "reid.epochs=1",
    "detector.batch_size=1",          # 2 steps of 1 frame: half the peak memory of one of 2
    "reid.ids_per_batch=2",           # the tiny world has 2 training identities
    "cache.proposals_per_image=16",   # the Re-ID crops of 128 proposals x 2 views dominate
    "detector.workers=1", "reid.workers=1", "cache.workers=1",
]
FULLSIZE_STUDENT_SETS = [
    "data.root={root}", "cache={cache}", "run_dir={work}/student",
    "model.pretrained=false", "train.device={device}", "train.epochs=1",
    "train.batch_size=2", "data.workers=1",
]

Runner = Callable[[str, list[str]], str]   # (step name, cli arguments) -> last stdout line


def fill(sets: list[str], **values) -> list[str]:
    """``--set`` arguments with the placeholders filled in."""
    out = []
    for s in sets:
        out += ["--set", s.format(**values)]
    return out


def run_steps(run: Runner, work: Path, device: str, fmt: str = "prw") -> dict:
    """The whole path, one toolkit command per step through ``run``; returns what the steps
    printed last (root, cache, run dir, metrics table)."""
    root = run("make-synthetic", ["make-synthetic", "--format", fmt, "--out",
                                  str(work / "data"), "--size", FULL_SIZE, *FULLSIZE_WORLD])
    teacher = ["--config", TEACHER_CONFIG[fmt],
               *fill(FULLSIZE_TEACHER_SETS, root=root, work=work, device=device)]
    run("inspect-dataset", ["inspect-dataset", "--dataset", fmt, "--root", root])
    run("train-teacher detector", ["train-teacher", "--part", "detector", *teacher,
                                   "--no-progress"])
    run("train-teacher reid", ["train-teacher", "--part", "reid", *teacher, "--no-progress"])
    cache = run("build-cache", ["build-cache", *teacher, "--no-progress"])
    student = ["--config", STUDENT_CONFIG[fmt],
               *fill(FULLSIZE_STUDENT_SETS, root=root, work=work, device=device, cache=cache)]
    run_dir = run("train-student", ["train-student", *student, "--no-progress"])
    table = run("evaluate", ["evaluate", "--dataset", fmt, "--root", root, "--checkpoint",
                             f"{run_dir}/checkpoint_last.pt", "--device", device,
                             "--batch-size", "1", "--json", str(work / "eval" / "metrics.json")])
    return {"root": root, "cache": cache, "run_dir": run_dir, "table": table}


class SubprocessRunner:
    """Runs each step as ``python cli.py ...``; keeps wall time, CPU time and peak memory."""

    def __init__(self):
        self.rows: list[tuple[str, float, float, str]] = []

    def __call__(self, name: str, args: list[str]) -> str:
        print(f"==> {name}: python cli.py {' '.join(args)}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if proc.returncode != 0:
            sys.exit(f"step {name} failed:\n{proc.stdout}\n{proc.stderr}")
        memory = re.findall(r"peak memory: (.*)", proc.stderr)
        self.rows.append((name, wall, cpu, memory[-1] if memory else "-"))
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def table(self) -> str:
        out = ["| step | wall time | CPU time | peak memory (RSS) |", "|---|---|---|---|"]
        out += [f"| {n} | {w:.1f} s | {c:.1f} s | {m} |" for n, w, c, m in self.rows]
        total_w = sum(r[1] for r in self.rows)
        total_c = sum(r[2] for r in self.rows)
        out.append(f"| total | {total_w:.1f} s | {total_c:.1f} s | |")
        return "\n".join(out)


def machine(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}"
    return (f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads); torch {torch.__version__}")


SECTION = "## The real configs at full size (1920x1080)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="work/bench-fullsize", help="emptied first")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    work = ROOT / args.work
    if work.exists():
        import shutil
        shutil.rmtree(work)
    runner = SubprocessRunner()
    run_steps(runner, work, args.device)
    text = runner.table()
    print("\n" + text)
    if args.record:
        note = (f"- machine: {machine(args.device)}; load average {os.getloadavg()[0]:.1f} "
                f"when done\n- command: `python bench/bench_fullsize.py "
                f"{' '.join(sys.argv[1:])}`\n- date: {datetime.date.today()}\n")
        bench_md = ROOT / "BENCHMARKS.md"
        head = "" if SECTION in bench_md.read_text() else f"\n{SECTION}\n"
        with open(bench_md, "a") as f:
            f.write(f"{head}\n{note}\n{text}\n")


if __name__ == "__main__":
    main()
