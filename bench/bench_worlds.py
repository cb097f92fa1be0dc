#!/usr/bin/env python
"""Does distillation hold on worlds nobody tuned it on? A world is a (style, seed, layout):
a synthetic world style (pipeline/data/synthetic/styles.py), a world seed and the on-disk
layout (PRW, or CUHK-SYSU scored with its gallery protocol). For each world this makes the
world, trains the two teachers side by side and builds their cache, then runs `cli.py ablate`
for the R18 student without and with the default distillation terms
(configs/synthetic/student-r18-distilled.yaml) at the demo's budget (configs/synthetic/*,
unchanged). It prints one row per world (teacher, both students, the share of the
teacher-student gap the distilled student closes), the mean over world seeds per style and
layout, and the worst world; ``--record`` appends the tables to BENCHMARKS.md.

    .venv/bin/python bench/bench_worlds.py --styles default,crowded-street,indoor-mall,night-cctv \\
        --seeds 0,1 --layouts prw,cuhk-sysu [--student-seeds 0] [--size 320x240] [--dry-run]

The earlier worlds are `--styles default --seeds 1 --layouts prw` (seed1), `--size 480x360
--seeds 0` (size480) and `--layouts cuhk-sysu --seeds 0` (cuhk). Everything lands under
work/worlds/NAME/ and is reused by a second run (the ablation's runs are keyed by their
config); `--dry-run` prints the worlds and the commands and runs nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.data.synthetic import (FORMATS, STYLES, SyntheticWorldError,  # noqa: E402
                                     parse_size)

CLI = [sys.executable, str(ROOT / "cli.py")]
TEACHER = ROOT / "configs/synthetic/teacher.yaml"
STUDENT = ROOT / "configs/synthetic/student-r18-distilled.yaml"
DEMO_SIZE = "320x240"            # the demo's world: style default, seed 0, prw, 320x240
METRICS = ("mAP", "det_ap")      # search mAP, detection AP


@dataclass(frozen=True)
class World:
    style: str
    seed: int
    layout: str                  # "prw" or "cuhk-sysu"
    size: str = DEMO_SIZE

    @property
    def name(self) -> str:
        size = "" if self.size == DEMO_SIZE else f"-{self.size}"
        return f"{self.style}-seed{self.seed}-{self.layout}{size}"

    @property
    def folder(self) -> Path:
        return ROOT / "work/worlds" / self.name


def plan_worlds(styles: list[str], seeds: list[int], layouts: list[str], size: str) -> list[World]:
    return [World(style, seed, layout, size) for style in styles for layout in layouts
            for seed in seeds]


def write_configs(world: World) -> tuple[Path, Path]:
    """The world's teacher and student YAML: the synthetic configs with its data swapped in."""
    world.folder.mkdir(parents=True, exist_ok=True)
    data = f"data:\n  dataset: {world.layout}\n  root: {world.folder / 'data'}\n"
    teacher, student = teacher_path(world), world.folder / "student.yaml"
    teacher.write_text(f"_base_: {TEACHER}\n{data}  synthetic: {{seed: {world.seed}, size: "
                       f"{world.size}, style: {world.style}}}\n"
                       f"out_dir: {world.folder / 'teachers'}\n")
    student.write_text(f"_base_: {STUDENT}\n{data}teacher_config: {teacher}\n")
    return teacher, student


def teacher_path(world: World) -> Path:
    return world.folder / "teacher.yaml"


def commands(world: World, student_seeds: str, arms: list[str] = ()) -> dict[str, list[str]]:
    """The cli.py arguments of each step, by the name of its log file; ``arms`` ("NAME:KEY=VALUE",
    as `ablate --arm` takes them) are trained and scored beside the two students."""
    teacher = str(teacher_path(world))
    steps = {f"teacher-{part}": ["train-teacher", "--part", part, "--config", teacher,
                                 "--no-progress"] for part in ("detector", "reid")}
    steps["cache"] = ["build-cache", "--config", teacher, "--no-progress"]
    steps["ablation"] = ["ablate", "--config", str(world.folder / "student.yaml"), "--out",
                         str(world.folder / "ablation"), "--variants", "none,all", "--seeds",
                         student_seeds, "--jobs", "2", "--teacher", teacher,
                         *(a for arm in arms for a in ("--arm", arm))]
    return steps


def run(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env)


def stage_one(world: World, steps: dict[str, list[str]]) -> None:
    """Both teachers side by side (one core each, as make demo trains them), then the cache."""
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // 2)))
    procs = [run(steps[f"teacher-{part}"], world.folder / f"teacher-{part}.log", env)
             for part in ("detector", "reid")
             if not (world.folder / "teachers" / f"{part}.pt").is_file()]
    for p in procs:
        if p.wait() != 0:
            sys.exit(f"{world.name}: a teacher failed; see {world.folder}/teacher-*.log")
    if run(steps["cache"], world.folder / "cache.log").wait() != 0:
        sys.exit(f"{world.name}: build-cache failed; see {world.folder / 'cache.log'}")


def ablate(world: World, steps: dict[str, list[str]]) -> dict:
    if run(steps["ablation"], world.folder / "ablation.log").wait() != 0:
        sys.exit(f"{world.name}: ablate failed; see {world.folder / 'ablation.log'}")
    return json.loads((world.folder / "ablation" / "ablation.json").read_text())


def arm_names(arms: list[str]) -> list[str]:
    """The names of ``arms`` ("NAME:KEY=VALUE"), as ablate labels their runs."""
    return [arm.partition(":")[0].strip() for arm in arms]


def scores(result: dict, arms: list[str] = ()) -> dict:
    """Teacher, both students and each arm (``arms``: their names) in percent, mean over
    student seeds, and "gaps": variant ("all" = the distilled student, or an arm) -> the share
    of the teacher-undistilled gap it closes."""
    out = {"teacher": {k: result["teacher"][k] for k in METRICS}}   # ablate gives it in percent
    for variant in ("none", "all", *arms):
        runs = [r for r in result["runs"] if r["variant"] == variant]
        out[variant] = {k: 100 * sum(r["search"][k] for r in runs) / len(runs) for k in METRICS}
    out["gaps"] = {v: {k: (out[v][k] - out["none"][k]) / (out["teacher"][k] - out["none"][k])
                       for k in METRICS} for v in ("all", *arms)}
    return out


def table_head(arms: list[str]) -> str:
    """The per-world table's header: the distilled student's columns, then each arm's."""
    cells = ["world", "teacher mAP / det AP", "R18 none", "R18 distilled", "mAP gap closed",
             "det AP gap closed"]
    cells += [c for arm in arms for c in (f"R18 {arm}", f"{arm}: mAP gap", f"{arm}: det AP gap")]
    return "| " + " | ".join(cells) + " |\n" + "|---" * len(cells) + "|"


def world_row(world: World, s: dict, arms: list[str] = ()) -> str:
    pair = lambda d: f"{d['mAP']:.2f} / {d['det_ap']:.2f}"  # noqa: E731
    gaps = lambda g: f"{100 * g['mAP']:.0f}% | {100 * g['det_ap']:.0f}%"  # noqa: E731
    cells = [world.name, pair(s["teacher"]), *(f"{pair(s[v])}" for v in ("none", "all")),
             gaps(s["gaps"]["all"])]
    cells += [f"{pair(s[arm])} | {gaps(s['gaps'][arm])}" for arm in arms]
    return "| " + " | ".join(cells) + " |"


def summary(results: dict[World, dict], variant: str = "all") -> str:
    """Per (style, layout, size): the gaps ``variant`` closes (the distilled student "all", or
    an arm), mean over world seeds; then the worst world and the worst seed mean, by the
    search-mAP gap."""
    groups: dict[tuple, list[dict]] = {}
    for world, s in results.items():
        groups.setdefault((world.style, world.layout, world.size), []).append(s["gaps"][variant])
    means = {g: {k: sum(v[k] for v in gaps) / len(gaps) for k in METRICS}
             for g, gaps in groups.items()}
    rows = [f"| {style} | {layout} | {size} | {len(groups[(style, layout, size)])} | "
            f"{100 * m['mAP']:.0f}% | {100 * m['det_ap']:.0f}% |"
            for (style, layout, size), m in means.items()]
    worst_world = min(results, key=lambda w: results[w]["gaps"][variant]["mAP"])
    worst_group = min(means, key=lambda g: means[g]["mAP"])
    gap = results[worst_world]["gaps"][variant]
    return "\n".join([
        f"R18 {'distilled' if variant == 'all' else variant}:", "",
        "| style | layout | size | world seeds | mAP gap closed (mean) "
        "| det AP gap closed (mean) |",
        "|---|---|---|---|---|---|", *rows, "",
        f"Worst world: {worst_world.name} ({100 * gap['mAP']:.0f}% of the mAP gap, "
        f"{100 * gap['det_ap']:.0f}% of the detection-AP gap). Worst seed mean: "
        f"{' / '.join(worst_group)} ({100 * means[worst_group]['mAP']:.0f}% / "
        f"{100 * means[worst_group]['det_ap']:.0f}%)."])


def comma_list(text: str, allowed=None, kind=str) -> list:
    items = [kind(v.strip()) for v in text.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of "
                                         f"{', '.join(map(str, allowed or [kind.__name__]))}")
    return items


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--styles", default="default", type=lambda t: comma_list(t, STYLES),
                    help=f"world styles, comma-separated, of {', '.join(STYLES)}")
    ap.add_argument("--seeds", default="0,1", type=lambda t: comma_list(t, kind=int),
                    help="world seeds (data.synthetic.seed), comma-separated")
    ap.add_argument("--layouts", default="prw,cuhk-sysu", type=lambda t: comma_list(t, FORMATS),
                    help="on-disk layouts, comma-separated: prw, cuhk-sysu")
    ap.add_argument("--size", default=DEMO_SIZE, help="image WIDTHxHEIGHT of every world")
    ap.add_argument("--student-seeds", default="0", type=lambda t: comma_list(t, kind=int),
                    help="student seeds (train.seed) per world, comma-separated")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME:KEY=VALUE[;...]",
                    help="also train and score this arm on every world (as `cli.py ablate "
                         "--arm`), e.g. uncertainty:distill.balance=uncertainty; repeatable")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the worlds and the commands; make and train nothing")
    ap.add_argument("--record", action="store_true", help="append the tables to BENCHMARKS.md")
    args = ap.parse_args()
    try:
        parse_size(args.size)
    except SyntheticWorldError as e:
        ap.error(str(e))
    return args


def record(table: str, student_seeds: str) -> None:
    command = "python bench/bench_worlds.py " + " ".join(sys.argv[1:])
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write(f"\n## Distillation over world styles\n\n- machine: "
                f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                f"threads as `cli.py ablate --jobs 2` sets them\n- command: `{command}`\n"
                f"- date: {datetime.date.today()}\n\nStudents: means over student seeds "
                f"{student_seeds}; search mAP / detection AP in percent.\n\n{table}\n")


def main() -> None:
    args = parse_args()
    worlds = plan_worlds(args.styles, args.seeds, args.layouts, args.size)
    student_seeds = ",".join(map(str, args.student_seeds))
    if args.dry_run:
        for world in worlds:
            print(f"# {world.name}: style {world.style}, seed {world.seed}, {world.layout}, "
                  f"{world.size} -> {world.folder}")
            for step in commands(world, student_seeds, args.arm).values():
                print("  " + shlex.join(["python", "cli.py", *step]))
        print(f"{len(worlds)} worlds")
        return
    results, arms = {}, arm_names(args.arm)
    for world in worlds:
        start = time.time()
        write_configs(world)
        steps = commands(world, student_seeds, args.arm)
        stage_one(world, steps)
        results[world] = scores(ablate(world, steps), arms)
        print(world_row(world, results[world], arms),
              f"({(time.time() - start) / 60:.1f} min)", flush=True)
    table = "\n".join([table_head(arms), *(world_row(w, s, arms) for w, s in results.items()),
                       *(part for variant in ("all", *arms)
                         for part in ("", summary(results, variant)))])
    print(table)
    if args.record:
        record(table, student_seeds)


if __name__ == "__main__":
    main()
