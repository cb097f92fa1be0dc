#!/usr/bin/env python
"""Command line of the person-search toolkit. Parses options and calls pipeline/ and cache/."""
from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import click

from cache import CacheMismatchError, TeacherCache
from cache.verify import verify_cache
from pipeline.ablation import AblationError, parse_arm, plan_runs, run_ablation, term_variants
from pipeline.config import ConfigError, load_config
from pipeline.config.student import StudentConfig
from pipeline.config.teacher import TeacherConfig
from pipeline.data import read_dataset
from pipeline.data.cuhk_sysu import GALLERY_SIZES
from pipeline.data.inspect import export_csv, format_table, split_summary
from pipeline.data.records import FULL_GALLERY, DatasetError
from pipeline.data.synthetic import SyntheticWorldError, generate, parse_size
from pipeline.demo import run_demo
from pipeline.engine.trainer import NonFiniteLossError
from pipeline.evaluation.command import default_out_dir, evaluate_command
from pipeline.evaluation.protocols import ProtocolError
from pipeline.gallery.results_file import ResultsFileError
from pipeline.inference.run import RESULTS_FILES, results_from_model
from pipeline.models.checkpoint import CheckpointError
from pipeline.stages.student import CacheContractError, train_student
from pipeline.stages.teacher_cache import build_cache
from pipeline.stages.teachers import train_detector, train_reid


def friendly_errors(fn):
    """Turn the project's own input errors into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DatasetError, ConfigError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


@click.group()
def cli():
    """Person search with knowledge distillation from a precomputed teacher cache."""


# ---------------------------------------------------------------- data (issue: foundation)

@cli.command("inspect-dataset")
@click.option("--dataset", type=click.Choice(["prw", "cuhk-sysu"]), required=True)
@click.option("--root", type=click.Path(), required=True, help="dataset folder as released")
@click.option("--export", "export", type=click.Path(dir_okay=False), default=None,
              help="write every box to this CSV: split,image,x1,y1,x2,y2,pid,camera")
@friendly_errors
def inspect_dataset(dataset, root, export):
    """Summarise a dataset per split; optionally export every box as CSV."""
    data = read_dataset(dataset, root)
    click.echo(f"{dataset} at {root}")
    click.echo(format_table(split_summary(data)))
    if dataset == "cuhk-sysu":
        sizes = ", ".join(str(n) for n in sorted(data.query_galleries)) or "none"
        click.echo(f"protocol gallery sizes: {sizes}")
    if export:
        rows = export_csv(data, export)
        click.echo(f"wrote {rows} boxes to {export}")


def _size_option(ctx, param, value):
    try:
        return parse_size(value)
    except SyntheticWorldError as e:
        raise click.BadParameter(str(e)) from None


@cli.command("make-synthetic")
@click.option("--format", "fmt", type=click.Choice(["prw", "cuhk-sysu"]), required=True,
              help="on-disk layout to write")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="dataset root to create (empty, new, or an earlier synthetic world)")
@click.option("--identities", type=click.IntRange(min=4), default=60, show_default=True,
              help="labeled identities, split about half train / half test")
@click.option("--images", type=click.IntRange(min=4), default=240, show_default=True,
              help="scene images, half train and half test (at least --identities)")
@click.option("--size", default="320x240", show_default=True, callback=_size_option,
              help="image WIDTHxHEIGHT")
@click.option("--cameras", type=click.IntRange(min=2), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def make_synthetic_cmd(fmt, out, identities, images, size, cameras, seed):
    """Write a synthetic person-search world in the PRW or CUHK-SYSU format; prints its root."""
    try:
        dataset = generate(fmt, out, identities=identities, images=images, size=size,
                           cameras=cameras, seed=seed, progress=True)
    except SyntheticWorldError as e:
        raise click.UsageError(str(e)) from None
    labeled = sum(int((r.pids >= 0).sum()) for r in dataset.train + dataset.gallery)
    boxes = sum(len(r.boxes) for r in dataset.train + dataset.gallery)
    extra = (f", galleries {sorted(dataset.query_galleries)}" if dataset.query_galleries else "")
    click.echo(f"{fmt}: {len(dataset.train)} train + {len(dataset.gallery)} test images, "
               f"{boxes} boxes ({labeled} labeled), {identities} identities, "
               f"{len(dataset.queries)} queries{extra}")
    click.echo(str(dataset.root))


# ---------------------------------------------------------------- teachers and cache (stage one)

def _teacher_config(config_path, overrides):
    return load_config(config_path, TeacherConfig, list(overrides))


_SET_HELP = "override a config value, e.g. --set detector.epochs=2 (repeatable)"


@cli.command("train-teacher")
@click.option("--part", type=click.Choice(["detector", "reid"]), required=True)
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="teacher YAML (configs/teacher/*.yaml, configs/synthetic/teacher.yaml)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--resume", is_flag=True, help="continue from the part's checkpoint_last.pt")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly_errors
def train_teacher_cmd(part, config_path, overrides, resume, no_progress):
    """Train one teacher; prints its checkpoint (out_dir/detector.pt or reid.pt) last."""
    cfg = _teacher_config(config_path, overrides)
    train = train_detector if part == "detector" else train_reid
    try:
        path = train(cfg, resume=resume, progress=not no_progress)
    except (NonFiniteLossError, CheckpointError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(path))


@cli.command("build-cache")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="teacher YAML (configs/teacher/*.yaml, configs/synthetic/teacher.yaml)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--train-missing", is_flag=True, help="train the teachers that have no checkpoint")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (overrides cache.device)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly_errors
def build_cache_cmd(config_path, overrides, train_missing, device, no_progress):
    """Run both teachers over the training split into the teacher cache (resumes an
    interrupted build; returns at once when the cache exists). Prints the cache path last."""
    cfg = _teacher_config(config_path, overrides)
    for part, train in (("detector", train_detector), ("reid", train_reid)):
        path = cfg.checkpoint(part)
        if path.is_file():
            continue
        if not train_missing:
            raise click.ClickException(
                f"teacher {part} checkpoint not found: {path}; train it with `python cli.py "
                f"train-teacher --part {part} --config {config_path}` or pass --train-missing")
        click.echo(f"training the {part} teacher -> {path}", err=True)
        train(cfg, progress=not no_progress)
    start = time.perf_counter()
    path = build_cache(cfg, device=device, progress=not no_progress)
    click.echo(f"cache ready in {time.perf_counter() - start:.1f} s", err=True)
    click.echo(str(path))


@cli.group("cache")
def cache_group():
    """Inspect and check teacher cache files."""


@cache_group.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@friendly_errors
def cache_info_cmd(path):
    """Summary of a cache file: fingerprints, sizes, what it holds."""
    try:
        c = TeacherCache(path)
    except CacheMismatchError as e:
        raise click.ClickException(str(e)) from None
    m = c.meta
    pids, _, counts = c.identity_table()
    rows = [("file", path), ("size", f"{os.path.getsize(path) / 1e6:.2f} MB"),
            ("schema version", m.schema_version), ("dataset", m.dataset),
            ("created", m.created), ("images", m.num_images), ("embedding dim", m.embedding_dim),
            ("float16", m.float16), ("flip view", m.has_flip),
            ("proposals per image", m.proposals_per_image),
            ("proposal rows", m.num_proposals), ("jitter per box", m.jitter_per_box),
            ("jitter rows", m.num_jitter), ("identities", len(pids)),
            ("labeled GT boxes", int(counts.sum())),
            ("split fingerprint", m.split_fingerprint[:16]),
            ("detector fingerprint", m.detector_fingerprint[:16]),
            ("reid fingerprint", m.reid_fingerprint[:16]),
            ("config fingerprint", m.config_fingerprint[:16])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    c.close()


@cache_group.command("verify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dataset", type=click.Choice(["prw", "cuhk-sysu"]), default=None,
              help="with --root: also check the cache against this dataset's training split")
@click.option("--root", type=click.Path(), default=None, help="dataset folder as released")
@friendly_errors
def cache_verify_cmd(path, dataset, root):
    """Check a cache file's structure (and its data, with --dataset/--root); exit 1 on problems."""
    if (dataset is None) != (root is None):
        raise click.UsageError("--dataset and --root go together")
    records = None
    if dataset is not None:
        records = read_dataset(dataset, root).train
    problems = verify_cache(path, records, dataset)
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {path}")



# ---------------------------------------------------------------- student (stage two)

@cli.command("train-student")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="student YAML (configs/student/*.yaml, configs/synthetic/student-*.yaml)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a config value, e.g. --set train.epochs=2 (repeatable)")
@click.option("--resume", is_flag=True,
              help="continue from run_dir/checkpoint_last.pt (same weights as an uninterrupted run)")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (overrides train.device)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly_errors
def train_student_cmd(config_path, overrides, resume, device, no_progress):
    """Train an end-to-end student from the teacher cache; prints the run directory last."""
    try:
        run_dir = train_student(config_path, overrides, resume=resume, device=device,
                                progress=not no_progress)
    except (CacheContractError, NonFiniteLossError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    stats_path = Path(run_dir) / "train_stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        if stats.get("images_per_s"):
            click.echo(f"training speed: {stats['images_per_s']:.2f} images/s "
                       f"({stats['steps']} steps on {stats['device']})")
    click.echo(str(run_dir))


# ---------------------------------------------------------------- evaluation

GALLERY_CHOICES = [str(n) for n in (*GALLERY_SIZES, FULL_GALLERY)]


@cli.command()
@click.option("--dataset", type=click.Choice(["prw", "cuhk-sysu"]), required=True)
@click.option("--root", type=click.Path(), required=True, help="dataset folder as released")
@click.option("--results", "results", type=click.Path(dir_okay=False), default=None,
              help="results file (HDF5, pipeline/gallery/results_file.py) of any method")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="a student checkpoint (RUN/checkpoint_last.pt): run it first")
@click.option("--teacher-config", type=click.Path(dir_okay=False), default=None,
              help="a teacher YAML config: run its two-step teacher (out_dir/*.pt) first")
@click.option("--gallery-size", type=click.Choice(GALLERY_CHOICES), default=None,
              help=f"CUHK-SYSU protocol gallery (default 100; {FULL_GALLERY} = whole pool); "
                   f"PRW: {FULL_GALLERY} only")
@click.option("--multi-view", is_flag=True, help="PRW: only frames from other cameras")
@click.option("--det-thresh", type=float, default=0.5, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--per-query", type=click.Path(dir_okay=False), default=None, help="CSV per query")
@click.option("--visualize", type=int, default=0, help="write N query pictures + cmc.png")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="pictures (and a model's results.h5); default: beside --json, else ./eval")
@click.option("--index", type=click.Choice(["flat", "ivf"]), default="flat", show_default=True,
              help="flat = exact; ivf = approximate (flagged in the output)")
@click.option("--gt-boxes", is_flag=True,
              help="with a model: the gallery's ground-truth boxes stand in for its detections "
                   "(score 1, embedded in query mode), so the mAP measures Re-ID alone")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=2, show_default=True)
@friendly_errors
def evaluate(dataset, root, results, checkpoint, teacher_config, gallery_size, multi_view,
             det_thresh, json_path, per_query, visualize, out_dir, index, gt_boxes, device,
             batch_size):
    """Search mAP / top-k and detection AP / recall with the standard protocols."""
    sources = [s for s in (results, checkpoint, teacher_config) if s is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --results, --checkpoint and --teacher-config")
    if gt_boxes and results is not None:
        raise click.UsageError("--gt-boxes needs a model (--checkpoint or --teacher-config): "
                               "it runs the model's query mode on the GT boxes")
    data = read_dataset(dataset, root)
    out_dir = default_out_dir(json_path) if out_dir is None else out_dir
    try:
        if checkpoint is not None or teacher_config is not None:
            kind = "student" if checkpoint is not None else "teacher"
            mode = "gt" if gt_boxes else "detect"
            results = results_from_model(checkpoint or teacher_config, kind, data,
                                         Path(out_dir) / RESULTS_FILES[mode], device=device,
                                         batch_size=batch_size, gallery_mode=mode)
        table, _ = evaluate_command(
            data, results, gallery_size=None if gallery_size is None else int(gallery_size),
            multi_view=multi_view, det_thresh=det_thresh, index=index, json_path=json_path,
            per_query=per_query, visualize=visualize, out_dir=out_dir)
    except (ResultsFileError, ProtocolError, CheckpointError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(table)


# ---------------------------------------------------------------- ablation

def _int_list(ctx, param, value):
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _name_list(choices):
    def parse(ctx, param, value):
        names = [v.strip() for v in value.split(",") if v.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise click.BadParameter(f"{bad}: expected a comma-separated subset of {choices}")
        return names
    return parse


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="base student YAML; its enabled distillation terms span the grid")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="folder for ablation.md, ablation.png, ablation.json (and runs/)")
@click.option("--variants", default="none,alone,all-but-one,all", show_default=True,
              callback=_name_list(("none", "alone", "all-but-one", "all")),
              help="which term variants (comma-separated; '' for only --arm rows)")
@click.option("--arm", "arms", multiple=True, metavar="NAME:KEY=VAL[;KEY=VAL]",
              help="an extra named row: overrides on top of the base config (repeatable)")
@click.option("--backbones", default="r18", show_default=True,
              callback=_name_list(("r18", "r34", "r50")), help="comma-separated")
@click.option("--seeds", default="0,1", show_default=True, callback=_int_list,
              help="comma-separated train.seed values")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override for every run, e.g. --set cache=work/cache/x.h5 (repeatable)")
@click.option("--teacher", "teacher_config", default=None, type=click.Path(dir_okay=False),
              help="teacher YAML: adds the two-step teacher's row and the gap columns")
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False),
              help="where runs live, keyed by config (default OUT/runs); share it between "
                   "grids to reuse runs")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="runs at a time; each gets cores/jobs threads (1 on a 2-core machine)")
@click.option("--device", default="cpu", show_default=True)
@friendly_errors
def ablate(config_path, out_dir, variants, arms, backbones, seeds, overrides, teacher_config,
          runs_dir, jobs, device):
    """Train and score a grid of students from one cache; table + plot, mean ± std over seeds."""
    try:
        base = load_config(config_path, StudentConfig, overrides)
        grid = term_variants(base.distill.enabled_terms(), variants) + \
            [parse_arm(a) for a in arms]
        if not grid:
            raise click.UsageError("nothing to run: no --variants and no --arm")
        if not seeds:
            raise click.UsageError("--seeds is empty")
        config = str(Path(config_path).resolve())
        runs = plan_runs(config, grid, backbones, seeds, tuple(overrides))
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{len(runs)} runs ({len(grid)} variants x {len(backbones)} backbones x "
               f"{len(seeds)} seeds), {jobs} at a time")
    command = "python cli.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        table, failures = run_ablation(
            config, Path(out_dir), runs, runs_dir=Path(runs_dir) if runs_dir else None,
            device=device, jobs=jobs, teacher_config=teacher_config, command=command,
            echo=click.echo)
    except AblationError as e:
        raise click.ClickException(str(e)) from None
    click.echo(Path(table).read_text())
    if failures:
        raise click.ClickException(f"{len(failures)} runs failed: " + "; ".join(failures))
    click.echo(str(table))


# ---------------------------------------------------------------- demo

@cli.command()
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda for the larger GPU version")
@friendly_errors
def demo(device):
    """The whole pipeline on synthetic data: data, teachers, cache, two students, evaluation."""
    run_demo(device)


if __name__ == "__main__":
    sys.exit(cli())
