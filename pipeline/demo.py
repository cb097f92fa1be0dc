"""`make demo`: the whole pipeline on a synthetic PRW-format world, end to end.

Each step is one of the toolkit's own commands, run as a subprocess so the demo exercises
exactly what a user types. Every step is skipped when its product already exists, so a second
`make demo` reuses the data, the teachers, the cache and the trained students.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from pipeline.config import load_config
from pipeline.config.student import StudentConfig
from pipeline.config.teacher import TeacherConfig

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "cli.py")]

DATA_ROOT = Path("work/data/synthetic-prw")
TEACHER_CONFIG = "configs/synthetic/teacher.yaml"
STUDENTS = {  # table label -> student config; both train from the one teacher cache
    "student R18, no distillation": "configs/synthetic/student-r18-none.yaml",
    "student R18, all distillation": "configs/synthetic/student-r18-all.yaml",
}
# On a GPU the same demo runs bigger: more data, larger images, longer training.
GPU_DATA = ["--identities", "150", "--images", "1200", "--size", "640x480"]
CPU_DATA = []


@dataclass
class Row:
    name: str
    metrics: dict
    train_images_per_s: float | None


def run_step(title: str, args: list[str]) -> str:
    """Run one toolkit command, streaming its output; return its last printed line."""
    click.secho(f"\n==> {title}", fg="cyan", bold=True)
    click.echo("    $ python cli.py " + " ".join(args))
    start = time.time()
    proc = subprocess.Popen(CLI + args, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.strip():
            last = line.strip()
    if proc.wait() != 0:
        raise click.ClickException(f"step failed: {title} (exit code {proc.returncode})")
    click.echo(f"    ({time.time() - start:.0f} s)")
    return last


def device_overrides(device: str) -> list[str]:
    return [] if device == "cpu" else ["--device", device]


def teacher_device_overrides(device: str) -> list[str]:
    """Train the teachers and build the cache on ``device`` (the cache key ignores devices)."""
    if device == "cpu":
        return []
    return ["--device", device, "--set", f"detector.device={device}",
            "--set", f"reid.device={device}"]


def make_data(device: str) -> None:
    if (ROOT / DATA_ROOT / "query_info.txt").exists():
        click.echo(f"\n==> synthetic data: reusing {DATA_ROOT}")
        return
    extra = GPU_DATA if device != "cpu" else CPU_DATA
    run_step("make a synthetic PRW-format world",
             ["make-synthetic", "--format", "prw", "--out", str(DATA_ROOT), "--seed", "0", *extra])


def configured_run_dir(config: str) -> Path:
    return Path(load_config(ROOT / config, StudentConfig).run_dir)


def train_student(config: str, device: str) -> Path:
    run_dir = configured_run_dir(config)
    if (ROOT / run_dir / "train_stats.json").exists():
        click.echo(f"\n==> {Path(config).stem}: reusing the trained student in {run_dir}")
        return run_dir
    run_dir_line = run_step(f"train {Path(config).stem} from the teacher cache",
                            ["train-student", "--config", config, *device_overrides(device)])
    return Path(run_dir_line)


def newest_mtime(paths) -> float:
    return max((ROOT / p).stat().st_mtime for p in paths)


def evaluate(name: str, model_option: list[str], out_dir: Path, device: str,
             inputs: list[Path]) -> dict:
    """Score one model (``model_option``: ``--checkpoint FILE`` or ``--teacher-config FILE``);
    reuse its metrics when they are newer than every file in ``inputs``."""
    json_path = out_dir / "metrics.json"
    if (ROOT / json_path).exists() and (ROOT / json_path).stat().st_mtime > newest_mtime(inputs):
        click.echo(f"\n==> evaluate {name}: reusing {json_path}")
        return json.loads((ROOT / json_path).read_text())
    (ROOT / out_dir).mkdir(parents=True, exist_ok=True)
    run_step(f"evaluate {name}",
             ["evaluate", "--dataset", "prw", "--root", str(DATA_ROOT), *model_option,
              "--json", str(json_path), "--out-dir", str(out_dir),
              "--visualize", "3", "--device", device])
    return json.loads((ROOT / json_path).read_text())


def teacher_weights() -> list[Path]:
    cfg = load_config(ROOT / TEACHER_CONFIG, TeacherConfig)
    return [cfg.checkpoint("detector"), cfg.checkpoint("reid")]


def read_train_speed(run_dir: Path) -> float | None:
    stats = ROOT / run_dir / "train_stats.json"
    if not stats.exists():
        return None
    return json.loads(stats.read_text()).get("images_per_s")


def print_table(rows: list[Row]) -> None:
    head = f"{'model':34s} {'mAP':>7s} {'top-1':>7s} {'det AP':>7s} {'recall':>7s} {'train img/s':>12s}"
    click.secho("\n" + head, bold=True)
    click.echo("-" * len(head))
    for r in rows:
        m = r.metrics
        speed = f"{r.train_images_per_s:12.2f}" if r.train_images_per_s else f"{'-':>12s}"
        click.echo(f"{r.name:34s} {100 * m['mAP']:7.2f} {100 * m['top1']:7.2f} "
                   f"{100 * m['det_ap']:7.2f} {100 * m['det_recall']:7.2f} {speed}")
    click.echo("(percent; search at detection threshold 0.5, detection AP/recall at 0.01)")


def run_demo(device: str) -> None:
    start = time.time()
    make_data(device)
    cache_line = run_step("stage one: teachers and the teacher cache (make teacher-cache)",
                          ["build-cache", "--config", TEACHER_CONFIG, "--train-missing",
                           *teacher_device_overrides(device)])
    click.echo(f"    cache: {cache_line}")
    rows = []
    teacher_dir = Path("work/runs/teacher-eval")
    rows.append(Row("teacher (two-step)",
                    evaluate("the two-step teacher", ["--teacher-config", TEACHER_CONFIG],
                             teacher_dir, device, teacher_weights()), None))
    for name, config in STUDENTS.items():
        run_dir = train_student(config, device)
        checkpoint = str(run_dir / "checkpoint_last.pt")
        metrics = evaluate(name, ["--checkpoint", checkpoint], run_dir / "eval", device,
                           [Path(checkpoint)])
        rows.append(Row(name, metrics, read_train_speed(run_dir)))
    print_table(rows)
    click.echo(f"\nPictures and curves: work/runs/*/losses.png, */eval/cmc.png, */eval/*.png")
    click.echo(f"demo finished in {(time.time() - start) / 60:.1f} min")
