"""`make demo`: the whole pipeline on a synthetic PRW-format world, end to end, ending with
the distilled student searching synthetic footage of the same world's people.

Each step is one of the toolkit's own commands, run as a subprocess so the demo exercises
exactly what a user types. Steps that do not depend on each other run side by side, each with
an equal share of the cores (the two teachers; the two students; the evaluations and the
footage index): on 2 cores two single-threaded trainings get through about 1.2x the work of
one two-threaded training after the other (BENCHMARKS.md, "make demo end to end"). Every step is
skipped when its product already exists, so a second `make demo` reuses the data, the
teachers, the cache and the trained students.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from pipeline.config import load_config
from pipeline.config.student import StudentConfig
from pipeline.config.teacher import TEACHER_PARTS, TeacherConfig
from pipeline.cores import shared_env
from pipeline.data.synthetic.video import ANNOTATIONS, read_footage_truth
from pipeline.footage.scoring import best_views, score_footage
from pipeline.footage.store import open_gallery

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "cli.py")]

DATA_ROOT = Path("work/data/synthetic-prw")
TEACHER_CONFIG = "configs/synthetic/teacher.yaml"
STUDENTS = {  # table label -> student config; both train from the one teacher cache
    "student R18, no distillation": "configs/synthetic/student-r18-none.yaml",
    "student R18, distilled": "configs/synthetic/student-r18-distilled.yaml",
}
# On a GPU the same demo runs bigger: more data, larger images, longer training.
GPU_DATA = ["--identities", "150", "--images", "1200", "--size", "640x480"]
CPU_DATA = []
DISTILLED = "student R18, distilled"            # the student that searches the footage
FOOTAGE_ROOT = Path("work/data/synthetic-footage")
FOOTAGE_GALLERY = Path("work/gallery/synthetic-footage")
FOOTAGE_RESULTS = Path("work/runs/footage-search")
FOOTAGE_EVERY = "1"                             # seconds between indexed video frames
LOG_DIR = Path("work/logs")                     # progress of steps that run side by side
STATUS_EVERY = 20.0                             # seconds between progress lines of those


@dataclass
class Row:
    name: str
    metrics: dict
    train_images_per_s: float | None


@dataclass
class Step:
    """One toolkit command of the demo: ``tag`` names it in the output and its log file."""
    tag: str
    title: str
    args: list[str]
    command: list[str] = field(default_factory=lambda: list(CLI))


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


def last_progress(log: Path) -> str:
    """The newest line or progress-bar state in ``log`` (progress bars rewrite with \\r)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1][:110] if parts else ""


def run_steps(steps: list[Step]) -> dict[str, str]:
    """Run ``steps`` side by side, each with an equal share of the cores; their standard
    output is printed as it comes, tagged, their progress bars go to LOG_DIR/TAG.log and a
    progress line per step is printed every STATUS_EVERY seconds. Returns each step's last
    printed line by tag; a failed step stops the demo with the end of its log."""
    if not steps:
        return {}
    if len(steps) == 1 and steps[0].command == CLI:
        return {steps[0].tag: run_step(steps[0].title, steps[0].args)}
    env = shared_env(len(steps))
    (ROOT / LOG_DIR).mkdir(parents=True, exist_ok=True)
    lines: queue.Queue = queue.Queue()
    running = {}
    for s in steps:
        log = ROOT / LOG_DIR / f"{s.tag}.log"
        click.secho(f"\n==> [{s.tag}] {s.title}", fg="cyan", bold=True)
        click.echo(f"    $ python cli.py {' '.join(s.args)}   (progress: {LOG_DIR / log.name})")
        with open(log, "w") as progress:    # the child keeps its own copy of the file
            proc = subprocess.Popen(s.command + s.args, cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=progress, text=True,
                                    bufsize=1)
        threading.Thread(target=_forward, args=(s.tag, proc.stdout, lines), daemon=True).start()
        running[s.tag] = (proc, log, time.time())
    return _follow(running, lines)


def _forward(tag: str, stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put((tag, line.rstrip("\n")))
    lines.put((tag, None))          # end of this step's output


def _follow(running: dict, lines: queue.Queue) -> dict[str, str]:
    last, done, next_status = {}, set(), time.time() + STATUS_EVERY
    while len(done) < len(running):
        try:
            tag, line = lines.get(timeout=max(0.1, next_status - time.time()))
        except queue.Empty:
            for t, (proc, log, start) in running.items():
                if t not in done:
                    click.echo(f"    [{t} {time.time() - start:.0f} s] {last_progress(log)}")
            next_status = time.time() + STATUS_EVERY
            continue
        proc, log, start = running[tag]
        if line is not None:
            click.echo(f"    [{tag}] {line}")
            last[tag] = line.strip() or last.get(tag, "")
            continue
        done.add(tag)
        if proc.wait() != 0:
            for t, (other, _, _) in running.items():
                if t not in done:
                    other.terminate()
            tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n")
                             .strip().splitlines()[-15:])
            raise click.ClickException(f"step failed: {tag} (exit code {proc.returncode}); "
                                       f"the end of {log}:\n{tail}")
        click.echo(f"    [{tag}] done ({time.time() - start:.0f} s)")
    return last


def device_overrides(device: str) -> list[str]:
    return [] if device == "cpu" else ["--device", device]


def teacher_device_overrides(device: str) -> list[str]:
    """Train the teachers and build the cache on ``device`` (the cache key ignores devices)."""
    if device == "cpu":
        return []
    return ["--set", f"detector.device={device}", "--set", f"reid.device={device}",
            "--set", f"cache.device={device}"]


def make_data(device: str) -> None:
    if (ROOT / DATA_ROOT / "query_info.txt").exists():
        click.echo(f"\n==> synthetic data: reusing {DATA_ROOT}")
        return
    extra = GPU_DATA if device != "cpu" else CPU_DATA
    run_step("make a synthetic PRW-format world",
             ["make-synthetic", "--format", "prw", "--out", str(DATA_ROOT), "--seed", "0", *extra])


def footage_step(device: str, *, say_reused: bool = True) -> list[Step]:
    """Videos of the same world's test identities (same world parameters as make_data)."""
    if (ROOT / FOOTAGE_ROOT / ANNOTATIONS).exists():
        if say_reused:
            click.echo(f"\n==> synthetic footage: reusing {FOOTAGE_ROOT}")
        return []
    extra = GPU_DATA if device != "cpu" else CPU_DATA
    return [Step("footage", "make synthetic footage: the world's test identities walking past "
                 "3 cameras", ["make-synthetic", "--format", "video", "--out",
                               str(FOOTAGE_ROOT), "--seed", "0", *extra])]


def stage_one(device: str) -> None:
    """Stage one (what `make teacher-cache` does in one process): the two teachers train side
    by side (beside the footage maker), then both run once over the training split into the
    cache."""
    cfg = load_config(ROOT / TEACHER_CONFIG, TeacherConfig)
    steps = [Step(f"teacher-{part}", f"stage one: train the {part} teacher",
                  ["train-teacher", "--part", part, "--config", TEACHER_CONFIG,
                   *teacher_device_overrides(device)])
             for part in TEACHER_PARTS if not (ROOT / cfg.checkpoint(part)).is_file()]
    if steps:
        run_steps(steps + footage_step(device))
    else:
        click.echo(f"\n==> stage one: reusing the teachers in {cfg.out_dir}")
    cache_line = run_step("stage one: run the teachers once into the teacher cache "
                          "(make teacher-cache)",
                          ["build-cache", "--config", TEACHER_CONFIG,
                           *teacher_device_overrides(device)])
    click.echo(f"    cache: {cache_line}")


def configured_run_dir(config: str) -> Path:
    return Path(load_config(ROOT / config, StudentConfig).run_dir)


def train_students(device: str) -> dict[str, Path]:
    """Both students side by side from the one cache; -> run folder by table label."""
    steps = []
    for name, config in STUDENTS.items():
        run_dir = configured_run_dir(config)
        if (ROOT / run_dir / "train_stats.json").exists():
            click.echo(f"\n==> {Path(config).stem}: reusing the trained student in {run_dir}")
        else:
            steps.append(Step(Path(config).stem, f"stage two: train {name} from the teacher "
                              "cache", ["train-student", "--config", config,
                                        *device_overrides(device)]))
    if steps:
        run_steps(steps)
    return {name: configured_run_dir(config) for name, config in STUDENTS.items()}


def newest_mtime(paths) -> float:
    return max((ROOT / p).stat().st_mtime for p in paths)


def evaluation_step(tag: str, name: str, model_option: list[str], out_dir: Path, device: str,
                    inputs: list[Path]) -> list[Step]:
    """Scoring one model (``model_option``: ``--checkpoint FILE`` or ``--teacher-config
    FILE``); none when its metrics are newer than every file in ``inputs``."""
    json_path = out_dir / "metrics.json"
    if (ROOT / json_path).exists() and (ROOT / json_path).stat().st_mtime > newest_mtime(inputs):
        click.echo(f"\n==> evaluate {name}: reusing {json_path}")
        return []
    (ROOT / out_dir).mkdir(parents=True, exist_ok=True)
    return [Step(tag, f"evaluate {name}",
                 ["evaluate", "--dataset", "prw", "--root", str(DATA_ROOT), *model_option,
                  "--json", str(json_path), "--out-dir", str(out_dir), "--visualize", "3",
                  "--device", device])]


def teacher_weights() -> list[Path]:
    cfg = load_config(ROOT / TEACHER_CONFIG, TeacherConfig)
    return [cfg.checkpoint("detector"), cfg.checkpoint("reid")]


def read_train_speed(run_dir: Path) -> float | None:
    stats = ROOT / run_dir / "train_stats.json"
    if not stats.exists():
        return None
    return json.loads(stats.read_text()).get("images_per_s")


def evaluate_and_index(run_dirs: dict[str, Path], device: str) -> list[Row]:
    """The three evaluations and the footage index (by the distilled student) side by side;
    -> the table's rows."""
    teacher_dir = Path("work/runs/teacher-eval")
    evals = {"teacher (two-step)": teacher_dir}
    steps = evaluation_step("eval-teacher", "the two-step teacher",
                            ["--teacher-config", TEACHER_CONFIG], teacher_dir, device,
                            teacher_weights())
    for name, run_dir in run_dirs.items():
        checkpoint = run_dir / "checkpoint_last.pt"
        evals[name] = run_dir / "eval"
        steps += evaluation_step(f"eval-{run_dir.name}", name, ["--checkpoint", str(checkpoint)],
                                 run_dir / "eval", device, [checkpoint])
    distilled = run_dirs[DISTILLED] / "checkpoint_last.pt"
    steps.append(Step("calibrate", "fit the distilled student's 'same person' probability on "
                      "the training identities (the results page draws its line)",
                      ["calibrate", "--model", str(distilled), "--dataset", "prw", "--root",
                       str(DATA_ROOT), "--device", device, "--no-progress"]))
    # The footage is made in stage one, unless the teachers were reused from an earlier demo.
    footage = footage_step(device, say_reused=False)
    index = Step("index", "index the footage with the distilled student (resumes; only new "
                 "frames)", ["index", "--gallery", str(FOOTAGE_GALLERY), "--model",
                             str(distilled), str(FOOTAGE_ROOT),
                             "--every", FOOTAGE_EVERY, *device_overrides(device)])
    if footage:                        # the index waits for its footage
        run_steps(steps + footage)
        run_steps([index])
    else:
        run_steps(steps + [index])
    return [Row(name, json.loads((ROOT / out / "metrics.json").read_text()),
                None if name not in run_dirs else read_train_speed(run_dirs[name]))
            for name, out in evals.items()]


def footage_search(device: str, evaluated_top1: float) -> str:
    """Score the indexed footage's top hits against the annotations, search one walker;
    returns the path of the results page."""
    gallery = open_gallery(ROOT / FOOTAGE_GALLERY)
    truth = read_footage_truth(ROOT / FOOTAGE_ROOT)
    score = score_footage(gallery, truth)
    click.echo(f"\nfootage: the top hit is the query's walker for {100 * score.top1:.1f}% of "
               f"{score.queries} queries ({100 * score.cross_camera_top1:.1f}% of "
               f"{score.cross_camera_queries} when only other cameras may answer); the "
               f"student's evaluated PRW top-1 is {100 * evaluated_top1:.1f}%")
    views = best_views(gallery, truth)   # the best-framed walker asks; see best_views
    if not views:
        raise click.ClickException("the student found none of the footage's walkers")
    walker, (query, iou) = max(views.items(), key=lambda v: (v[1][1], -v[0]))
    return run_step(f"search the footage for walker {walker}, from the detection that frames "
                    f"them best (detection {query}, IoU {iou:.2f})",
                    ["search", "--gallery", str(FOOTAGE_GALLERY), "--hit", str(query),
                     "--out", str(FOOTAGE_RESULTS)])


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
    stage_one(device)
    rows = evaluate_and_index(train_students(device), device)
    print_table(rows)
    click.echo("\nPictures and curves: work/runs/*/losses.png, */eval/cmc.png, */eval/*.png")
    distilled = next(r for r in rows if r.name == DISTILLED)
    page = footage_search(device, distilled.metrics["top1"])
    click.echo(f"demo finished in {(time.time() - start) / 60:.1f} min; the search results "
               "page (open it in a browser):")
    click.echo(str(ROOT / page))
