"""Search accuracy of the teacher and of student variants trained from one teacher cache.

    .venv/bin/python bench/bench_variants.py --variants r18-none r18-lut r18-all r50-none \
        [--record]

Trains each `configs/synthetic/student-<variant>.yaml` (reusing a finished run), evaluates it
and the two-step teacher on the synthetic PRW-format world with the standard protocol, and
prints one markdown table (mAP, top-1, detection AP and recall, training images/s).
Assumes `make teacher-cache` (or `make demo`) has built the data, teachers and cache.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.demo import DATA_ROOT, TEACHER_CONFIG, configured_run_dir  # noqa: E402


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, check=True)


def evaluate(model_option: list[str], out_dir: Path) -> dict:
    """``model_option``: ``["--checkpoint", FILE]`` or ``["--teacher-config", FILE]``."""
    json_path = out_dir / "metrics.json"
    if not (ROOT / json_path).exists():
        run(["evaluate", "--dataset", "prw", "--root", str(DATA_ROOT), *model_option,
             "--json", str(json_path), "--out-dir", str(out_dir)])
    return json.loads((ROOT / json_path).read_text())


def variant_row(variant: str) -> tuple[str, dict, float | None]:
    config = f"configs/synthetic/student-{variant}.yaml"
    run_dir = configured_run_dir(config)
    if not (ROOT / run_dir / "train_stats.json").exists():
        run(["train-student", "--config", config, "--no-progress"])
    metrics = evaluate(["--checkpoint", str(run_dir / "checkpoint_last.pt")], run_dir / "eval")
    stats = json.loads((ROOT / run_dir / "train_stats.json").read_text())
    return f"student {variant}", metrics, stats.get("images_per_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["r18-none", "r18-lut", "r18-all", "r50-none"])
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    rows = [("teacher (two-step)", evaluate(["--teacher-config", TEACHER_CONFIG],
                                            Path("work/runs/teacher-eval")), None)]
    rows += [variant_row(v) for v in args.variants]
    lines = ["| model | mAP | top-1 | det AP | det recall | train images/s |",
             "|---|---|---|---|---|---|"]
    for name, m, speed in rows:
        lines.append(f"| {name} | {100 * m['mAP']:.2f} | {100 * m['top1']:.2f} | "
                     f"{100 * m['det_ap']:.2f} | {100 * m['det_recall']:.2f} | "
                     f"{f'{speed:.2f}' if speed else '-'} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Search accuracy: teacher vs student variants (synthetic PRW world)\n\n"
                    f"- machine: {platform.machine()}, CPU only, 2 cores\n"
                    f"- command: `python bench/bench_variants.py {' '.join(sys.argv[1:])}`\n"
                    f"- date: {datetime.date.today()}\n"
                    f"- data: `make-synthetic --format prw` defaults (240 frames of 320x240, "
                    f"60 identities); configs `configs/synthetic/student-*.yaml`\n\n{table}\n")


if __name__ == "__main__":
    main()
