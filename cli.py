#!/usr/bin/env python
"""Command line of the person-search toolkit. Parses options and calls pipeline/ and cache/."""
from __future__ import annotations

import functools
import json
import math
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import click

from cache import TeacherCache
from cache.verify import verify_cache
from pipeline.ablation import parse_arm, plan_runs, run_ablation, term_variants
from pipeline.config import load_config
from pipeline.config.student import StudentConfig
from pipeline.config.teacher import TeacherConfig
from pipeline.data import ensure_dataset, read_dataset
from pipeline.data.cuhk_sysu import GALLERY_SIZES
from pipeline.data.inspect import export_csv, format_table, split_summary
from pipeline.data.published import check_release
from pipeline.data.records import FULL_GALLERY
from pipeline.data.synthetic import (MARKER, STYLES, SyntheticWorldError, generate, parse_size,
                                     style_named)
from pipeline.data.synthetic.video import make_synthetic_video, read_footage_truth
from pipeline.demo import run_demo
from pipeline.errors import UserError
from pipeline.benchmark.command import default_out_dir, evaluate_command
from pipeline.footage.ranking import SearchFilter
from pipeline.footage.report import format_time
from pipeline.runtime.faiss_index import INDEX_KINDS
from pipeline.runtime.calibration import DEFAULT_THRESHOLD
from pipeline.runtime.types import RunSettings
from pipeline.runtime.onnx.runtime import RUNTIMES
from pipeline.footage.appearances import DEFAULT_RANKING, RANKINGS
from pipeline.footage.search import SEARCH_BY, search_command
from pipeline.footage.store import gallery_summary, merge_galleries, open_gallery, read_manifest
from pipeline.footage.store.ondisk import FOLDER as IVFPQ_FOLDER
from pipeline.footage.store.ondisk import RESCORE
from pipeline.footage.track_store import make_track_table, upgrade_gallery
from pipeline.footage.store.verify import repair_gallery, verify_gallery

# The commands that run a network import their implementation (and with it PyTorch, about
# 2-4 s) when they run, each such line marked "optional": --help, the scoring of a results
# file, searching from a hit and the cache commands stay PyTorch-free.

def friendly_errors(fn):
    """Turn the project's input errors (:class:`~pipeline.errors.UserError`: a bad config,
    data folder, cache, checkpoint, results file, gallery or query) and missing files into a
    one-line message and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, FileNotFoundError) as e:
            raise click.ClickException(" ".join(str(e).splitlines())) from None
    return wrapper


def report_peak_memory(fn):
    """After the command succeeds, print its peak memory (resident set size) as the last line
    on stderr: this process, its largest finished child (DataLoader workers), and on CUDA the
    most GPU memory PyTorch held."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        gb = 1e9 / 1024  # ru_maxrss counts KiB on Linux
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gb
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / gb
        text = f"peak memory: {own:.2f} GB" + (f" (largest worker {child:.2f} GB)" if child else "")
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            text += f", GPU {torch.cuda.max_memory_allocated() / 1e9:.2f} GB"
        click.echo(text, err=True)
        return result
    return wrapper


class FiniteFloat(click.FloatRange):
    """A number option that refuses nan and inf (click's FLOAT takes both, and a NaN compares
    false with every bound, so it would pass any range): a one-line usage error instead."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


@click.group()
def cli():
    """Person search with knowledge distillation from a precomputed teacher cache."""


# ---------------------------------------------------------------- data (issue: foundation)

@cli.command("inspect-dataset")
@click.option("--dataset", type=click.Choice(["prw", "cuhk-sysu"]), required=True)
@click.option("--root", type=click.Path(), required=True, help="dataset folder as released")
@click.option("--export", "export", type=click.Path(dir_okay=False), default=None,
              help="write every box to this CSV: split,image,x1,y1,x2,y2,pid,camera")
@click.option("--check", is_flag=True,
              help="compare with the release's published counts; exit 1 on any difference")
@friendly_errors
def inspect_dataset(dataset, root, export, check):
    """Summarise a dataset per split; optionally export every box as CSV or check that it is
    the complete release."""
    data = read_dataset(dataset, root)
    click.echo(f"{dataset} at {root}")
    click.echo(format_table(split_summary(data)))
    if dataset == "cuhk-sysu":
        sizes = ", ".join(str(n) for n in sorted(data.query_galleries)) or "none"
        click.echo(f"protocol gallery sizes: {sizes}")
    if export:
        rows = export_csv(data, export)
        click.echo(f"wrote {rows} boxes to {export}")
    if check:
        table, differences = check_release(data)
        click.echo(table)
        for d in differences:
            click.echo(f"differs: {d}")
        if differences:
            made = " (it is a synthetic world)" if (Path(root) / MARKER).is_file() else ""
            raise click.ClickException(f"{root} differs from the published {dataset} release "
                                       f"in {len(differences)} count(s), listed above{made}")
        click.echo(f"ok: {root} holds the complete {dataset} release")


def _size_option(ctx, param, value):
    try:
        return parse_size(value)
    except SyntheticWorldError as e:
        raise click.BadParameter(str(e)) from None


def _style_option(ctx, param, value):
    try:
        return style_named(value).name
    except SyntheticWorldError as e:
        raise click.BadParameter(str(e)) from None


@cli.command("make-synthetic")
@click.option("--format", "fmt", type=click.Choice(["prw", "cuhk-sysu", "video"]), required=True,
              help="on-disk layout to write; video: multi-camera footage of the world's test "
                   "identities with annotations.json")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="dataset root to create (empty, new, or an earlier synthetic world)")
@click.option("--identities", type=click.IntRange(min=4), default=60, show_default=True,
              help="labeled identities, split about half train / half test")
@click.option("--images", type=click.IntRange(min=4), default=240, show_default=True,
              help="scene images, half train and half test (at least --identities)")
@click.option("--size", default="320x240", show_default=True, callback=_size_option,
              help="image WIDTHxHEIGHT")
@click.option("--cameras", type=click.IntRange(min=2), default=None,
              help="camera count (default: the style's; 3 in the default style)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--style", metavar="NAME", default="default", show_default=True,
              callback=_style_option,
              help=f"the world's look, one of {', '.join(STYLES)} (README, \"World styles\")")
@click.option("--seconds", type=FiniteFloat(min=0, min_open=True), default=12.0,
              show_default=True, help="video: length of each camera's video")
@click.option("--fps", type=click.IntRange(min=1), default=4, show_default=True,
              help="video: frames per second")
@click.option("--walkers", type=click.IntRange(min=1), default=6, show_default=True,
              help="video: test identities that walk through (each past 2 cameras)")
@friendly_errors
def make_synthetic_cmd(fmt, out, identities, images, size, cameras, seed, style, seconds, fps,
                       walkers):
    """Write a synthetic person-search world in the PRW or CUHK-SYSU format, or footage of one
    (--format video, same world parameters -> the same people); prints its root."""
    world = dict(identities=identities, images=images, size=size, cameras=cameras, seed=seed,
                 style=style)
    if fmt == "video":
        _make_synthetic_video(out, world, seconds, fps, walkers)
        return
    try:
        dataset = generate(fmt, out, **world, progress=True)
    except SyntheticWorldError as e:
        raise click.UsageError(str(e)) from None
    labeled = sum(int((r.pids >= 0).sum()) for r in dataset.train + dataset.gallery)
    boxes = sum(len(r.boxes) for r in dataset.train + dataset.gallery)
    extra = (f", galleries {sorted(dataset.query_galleries)}" if dataset.query_galleries else "")
    click.echo(f"{fmt}: {len(dataset.train)} train + {len(dataset.gallery)} test images, "
               f"{boxes} boxes ({labeled} labeled), {identities} identities, "
               f"{len(dataset.queries)} queries{extra}, style {style}")
    click.echo(str(dataset.root))


def _make_synthetic_video(out, world: dict, seconds, fps, walkers):
    try:
        root = make_synthetic_video(out, **world, seconds=seconds, fps=fps, walkers=walkers,
                                    progress=True)
    except SyntheticWorldError as e:
        raise click.UsageError(str(e)) from None
    truth = read_footage_truth(root)
    frames = sum(len(v["frames"]) for v in truth.videos.values())
    click.echo(f"video: {len(truth.videos)} cameras x {seconds:g} s at {fps} fps ({frames} "
               f"frames), walkers {truth.walker_pids}; annotations in {root / 'annotations.json'}")
    click.echo(str(root))


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
@report_peak_memory
def train_teacher_cmd(part, config_path, overrides, resume, no_progress):
    """Train one teacher; prints its checkpoint (out_dir/detector.pt or reid.pt) last."""
    from pipeline.stages.teachers import TEACHER_TRAINERS  # optional: PyTorch
    cfg = _teacher_config(config_path, overrides)
    ensure_dataset(cfg.data, say=lambda text: click.echo(text, err=True))
    path = TEACHER_TRAINERS[part](cfg, resume=resume, progress=not no_progress)
    click.echo(str(path))


@cli.command("build-cache")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="teacher YAML (configs/teacher/*.yaml, configs/synthetic/teacher.yaml)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--train-missing", is_flag=True, help="train the teachers that have no checkpoint")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (overrides cache.device)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly_errors
@report_peak_memory
def build_cache_cmd(config_path, overrides, train_missing, device, no_progress):
    """Run both teachers over the training split into the teacher cache (resumes an
    interrupted build; returns at once when the cache exists), then verify it against the
    training split. Makes a synthetic world (data.synthetic) that is missing. Prints the cache
    path last."""
    from pipeline.stages.teacher_cache import build_cache  # optional: PyTorch
    from pipeline.stages.teachers import TEACHER_TRAINERS  # optional: PyTorch
    cfg = _teacher_config(config_path, overrides)
    ensure_dataset(cfg.data, say=lambda text: click.echo(text, err=True))
    for part, train in TEACHER_TRAINERS.items():
        path = cfg.checkpoint(part)
        if path.is_file():
            continue
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun every rank would train
            raise click.ClickException(
                f"teacher {part} checkpoint not found: {path}; the teachers train in one "
                f"process: run `python cli.py train-teacher --part {part} --config "
                f"{config_path}{sets}` first, then build-cache under torchrun")
        if not train_missing:
            raise click.ClickException(
                f"teacher {part} checkpoint not found: {path}; train it with `python cli.py "
                f"train-teacher --part {part} --config {config_path}{sets}` or pass "
                "--train-missing")
        click.echo(f"training the {part} teacher -> {path}", err=True)
        train(cfg, progress=not no_progress)
    start = time.perf_counter()
    path = build_cache(cfg, device=device, progress=not no_progress)
    seconds = time.perf_counter() - start
    problems = verify_cache(path, read_dataset(cfg.data.dataset, cfg.data.root).train,
                            cfg.data.dataset)
    if problems:
        more = f" (+{len(problems) - 1} more: `python cli.py cache verify {path}`)" \
            if len(problems) > 1 else ""
        raise click.ClickException(f"the cache fails verification: {problems[0]}{more}; "
                                   f"delete {path} and run build-cache again")
    click.echo(f"cache ready in {seconds:.1f} s, verified: {path} holds every training image "
               f"of {cfg.data.root}", err=True)
    click.echo(str(path))


@cli.group("cache")
def cache_group():
    """Inspect and check teacher cache files."""


@cache_group.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@friendly_errors
def cache_info_cmd(path):
    """Summary of a cache file: fingerprints, sizes, what it holds."""
    c = TeacherCache(path)
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
@report_peak_memory
def train_student_cmd(config_path, overrides, resume, device, no_progress):
    """Train an end-to-end student from the teacher cache; prints the run directory last."""
    from pipeline.stages.student import train_student  # optional: PyTorch
    run_dir = train_student(config_path, overrides, resume=resume, device=device,
                            progress=not no_progress)
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
              help="results file (HDF5, pipeline/benchmark/results_file.py) of any method")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="a student checkpoint (RUN/checkpoint_last.pt): run it first")
@click.option("--teacher-config", type=click.Path(dir_okay=False), default=None,
              help="a teacher YAML config: run its two-step teacher (out_dir/*.pt) first")
@click.option("--gallery-size", type=click.Choice(GALLERY_CHOICES), default=None,
              help=f"CUHK-SYSU protocol gallery (default 100; {FULL_GALLERY} = whole pool); "
                   f"PRW: {FULL_GALLERY} only")
@click.option("--multi-view", is_flag=True, help="PRW: only frames from other cameras")
@click.option("--det-thresh", type=FiniteFloat(), default=0.5, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--per-query", type=click.Path(dir_okay=False), default=None, help="CSV per query")
@click.option("--visualize", type=int, default=0, help="write N query pictures + cmc.png")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="pictures (and a model's results.h5); default: beside --json, else ./eval")
@click.option("--index", type=click.Choice(["flat", "ivf"]), default="flat", show_default=True,
              help="flat = exact; ivf = approximate (flagged in the output)")
@click.option("--exact-boxes", is_flag=True,
              help="score against the released float boxes; default: whole-pixel boxes, as "
                   "every published number was computed")
@click.option("--cbgm", is_flag=True,
              help="re-score with context bipartite graph matching (SeqNet's CBGM)")
@click.option("--cbgm-k1", type=click.IntRange(min=1), default=None,
              help="CBGM: re-score the images of the k1 most similar detections "
                   "[default: CUHK-SYSU 10, PRW 30]")
@click.option("--cbgm-k2", type=click.IntRange(min=1), default=None,
              help="CBGM: context of k2 people, the query included [default: CUHK-SYSU 3, PRW 4]")
@click.option("--gt-boxes", is_flag=True,
              help="with a model: the gallery's ground-truth boxes stand in for its detections "
                   "(score 1, embedded in query mode), so the mAP measures Re-ID alone")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--runtime", type=click.Choice(RUNTIMES), default="torch", show_default=True,
              help="run the student in PyTorch or ONNX Runtime (a .pt --checkpoint is exported "
                   "to OUT_DIR/model.onnx first; an exported .onnx file runs as it is)")
@friendly_errors
@report_peak_memory
def evaluate(dataset, root, results, checkpoint, teacher_config, gallery_size, multi_view,
             det_thresh, json_path, per_query, visualize, out_dir, index, exact_boxes, cbgm,
             cbgm_k1, cbgm_k2, gt_boxes, device, batch_size, runtime):
    """Search mAP / top-k and detection AP / recall with the standard protocols."""
    sources = [s for s in (results, checkpoint, teacher_config) if s is not None]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --results, --checkpoint and --teacher-config")
    if gt_boxes and results is not None:
        raise click.UsageError("--gt-boxes needs a model (--checkpoint or --teacher-config): "
                               "it runs the model's query mode on the GT boxes")
    data = read_dataset(dataset, root, train=False)
    out_dir = default_out_dir(json_path) if out_dir is None else out_dir
    boxes = "exact" if exact_boxes else "published"
    if checkpoint is not None or teacher_config is not None:
        from pipeline.benchmark.run import (  # optional: PyTorch
            RESULTS_FILES, results_from_model)
        kind = "student" if checkpoint is not None else "teacher"
        mode = "gt" if gt_boxes else "detect"
        results = results_from_model(checkpoint or teacher_config, kind, data,
                                     Path(out_dir) / RESULTS_FILES[mode], device=device,
                                     batch_size=batch_size, runtime=runtime, boxes=boxes,
                                     gallery_mode=mode)
    table, _ = evaluate_command(
        data, results, gallery_size=None if gallery_size is None else int(gallery_size),
        multi_view=multi_view, det_thresh=det_thresh, index=index, json_path=json_path,
        per_query=per_query, visualize=visualize, out_dir=out_dir, boxes=boxes, cbgm=cbgm,
        cbgm_k1=cbgm_k1, cbgm_k2=cbgm_k2)
    click.echo(table)


# ---------------------------------------------------------------- deployment

@cli.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="a trained student, e.g. RUN/checkpoint_last.pt")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="file to write")
@click.option("--proposals", type=click.IntRange(min=1), default=None,
              help="RPN proposals scored per frame (default: the model's; fewer is faster, "
                   "see BENCHMARKS.md)")
@click.option("--int8", "int8_folder", type=click.Path(file_okay=False, exists=True),
              default=None, help="quantize the convolutions to int8, calibrated on up to 16 "
              "images under this folder (training frames, not the ones to be searched)")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="run one random frame through PyTorch and ONNX Runtime and compare")
@friendly_errors
def export_cmd(checkpoint, fmt, out, proposals, int8_folder, verify):
    """Export a student for deployment: one ONNX file with a gallery mode (image -> boxes,
    scores, embeddings) and a query mode (image + boxes -> embeddings); prints its path last."""
    from pipeline.runtime.onnx.export import export_checkpoint  # optional: PyTorch
    from pipeline.runtime.onnx.verify import verify_export  # optional: PyTorch
    path = export_checkpoint(checkpoint, out, proposals=proposals, int8_folder=int8_folder)
    if verify:
        click.echo(verify_export(checkpoint, path), err=True)
    click.echo(f"{fmt}: {os.path.getsize(path) / 1e6:.1f} MB", err=True)
    click.echo(str(path))


# ---------------------------------------------------------------- footage: index, search, serve

def _shard_option(value: str) -> tuple[int, int]:
    """"K/N" with 1 <= K <= N -> (K, N)."""
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise click.BadParameter(f"K/N with 1 <= K <= N, e.g. 2/4; got {value!r}")
    return k, n


@cli.command("index")
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(file_okay=False),
              help="gallery folder to create or extend")
@click.option("--model", required=True,
              help="student checkpoint (.pt) or two-step teacher config (.yaml)")
@click.argument("sources", nargs=-1, required=True)
@click.option("--camera", default=None,
              help="camera name for every source (default: first sub-folder, or file stem)")
@click.option("--every", type=FiniteFloat(min=0, min_open=True), default=1.0,
              show_default=True, help="seconds between sampled video frames")
@click.option("--index", "index_kind", type=click.Choice(INDEX_KINDS), default=None,
              help="FAISS index: flat = exact (a new gallery's default); ivf / hnsw = "
                   "approximate, for very large galleries; ivfpq = compressed codes, lists on "
                   "disk, exact re-scoring, for galleries beyond RAM (default: keep the "
                   "gallery's)")
@click.option("--min-score", type=FiniteFloat(0, 1), default=0.5, show_default=True,
              help="keep detections scoring at least this")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="frames per model forward")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="decoding processes")
@click.option("--chunk", type=click.IntRange(min=1), default=64, show_default=True,
              help="frames per commit (an interrupted run loses at most one chunk)")
@click.option("--size", type=click.IntRange(min=32), default=None,
              help="shorter side the frames are resized to (default: the model's own; "
                   "faster when smaller, BENCHMARKS.md 'Footage on a CPU': 750 for 1080p)")
@click.option("--proposals", type=click.IntRange(min=1), default=None,
              help="RPN proposals scored per frame (default: the model's; 100 is the CPU "
                   "footage setting)")
@click.option("--bf16", is_flag=True,
              help="bf16 autocast also on the CPU (about 1.8x faster where the CPU has bf16)")
@click.option("--shard-of", "shard", default="1/1", show_default=True, metavar="K/N",
              callback=lambda ctx, param, value: _shard_option(value),
              help="index only the K-th of every N sources (sorted): N machines index one "
                   "footage into N galleries, then `gallery merge` joins them")
@click.option("--ivfpq-trained", "ivfpq_trained", default=None,
              type=click.Path(file_okay=False, exists=True), metavar="GALLERY",
              help="use the ivfpq training of GALLERY (implies --index ivfpq): shards that "
                   "share one training merge on disk without encoding again")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly_errors
def index_cmd(gallery_dir, model, sources, camera, every, index_kind, min_score, batch_size,
              workers, chunk, size, proposals, bf16, shard, ivfpq_trained, device,
              no_progress):
    """Detect and embed every person in SOURCE... (image folders, videos, prw:ROOT,
    cuhk-sysu:ROOT) into a searchable gallery. Resumes an interrupted run; a re-run embeds
    only new frames. --size/--proposals/--bf16 are recorded: later runs and queries use the
    same. Unreadable sources are skipped and cut-off videos keep the frames that decode, both
    listed at the end; exits 1 (and makes no gallery) when nothing could be indexed. Prints
    the gallery folder last."""
    from pipeline.footage.indexing import index_footage  # optional: PyTorch
    r = index_footage(gallery_dir, model, sources, camera=camera, every=every,
                      device=device, batch_size=batch_size, workers=workers,
                      min_score=min_score, index_kind=index_kind, chunk_frames=chunk,
                      progress=not no_progress,
                      settings=RunSettings(size, proposals, bf16), shard=shard,
                      ivfpq_trained=ivfpq_trained)
    for problem in r.skipped:
        click.echo(f"skipped: {problem}", err=True)
    for problem in r.partial:
        click.echo(f"partly indexed: {problem}", err=True)
    if r.rank != 0:  # under torchrun process 0 reports for all
        return
    click.echo(f"indexed {r.frames_new} new frames of {r.frames_planned} ({r.detections_new} "
               f"people) from {r.sources} sources in {r.seconds:.1f} s "
               f"({r.frames_per_s:.2f} frames/s)")
    if r.gallery_frames or r.gallery_detections:
        exact = "approximate" if r.approximate else "exact"
        click.echo(f"gallery: {r.gallery_frames} frames, {r.gallery_detections} people, "
                   f"{r.index_kind} index ({exact})")
    click.echo(str(gallery_dir))


@cli.command("search")
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(file_okay=False))
@click.option("--query", "image", default=None, type=click.Path(dir_okay=False),
              help="picture of the person: a frame with --box, or a crop of them without")
@click.option("--box", "boxes", multiple=True, metavar="x1,y1,x2,y2",
              help="the person in --query (pixels); repeat it for several views of one "
                   "person (one query: their mean)")
@click.option("--hit", "hits", type=int, multiple=True, metavar="ID",
              help="search again from detection ID of an earlier result; repeat it for "
                   "several hits of one person (one query: their mean)")
@click.option("--top", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--camera", "cameras", multiple=True, help="only these cameras (repeatable)")
@click.option("--from", "start", type=FiniteFloat(), default=None, metavar="SECONDS",
              help="only frames at or after this time")
@click.option("--to", "end", type=FiniteFloat(), default=None, metavar="SECONDS",
              help="only frames at or before this time")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="results",
              show_default=True, help="folder for results.json, results.csv, results.html")
@click.option("--by", type=click.Choice(SEARCH_BY), default="appearance", show_default=True,
              help="appearance: also rank whole visits to a camera (tracks), one row each")
@click.option("--other-cameras", is_flag=True,
              help="only cameras other than the query's (a query from the gallery)")
@click.option("--rank", "ranking", type=click.Choice(RANKINGS), default=DEFAULT_RANKING,
              show_default=True, help="appearances: plain similarity, query expansion, or "
                                      "k-reciprocal re-ranking")
@click.option("--model", default=None, help="the gallery's model at another path")
@click.option("--device", default="cpu", show_default=True)
@friendly_errors
def search_cmd(gallery_dir, image, boxes, hits, top, cameras, start, end, out_dir, by,
               other_cameras, ranking, model, device):
    """Rank the gallery's people by similarity to the query; writes results.json, .csv and
    .html into --out and prints the path of results.html last."""
    embedder_for = None
    if image is not None or model is not None:  # a picture needs the model; a named one is checked
        from pipeline.footage.query_model import QueryEmbedder  # optional: PyTorch
        embedder_for = functools.partial(QueryEmbedder, model=model, device=device)
    filt = SearchFilter(tuple(cameras), start, end)
    payload, page = search_command(gallery_dir, out_dir, image=image, box=boxes, hit=hits,
                                   top=top, filt=filt, by=by, other_cameras=other_cameras,
                                   ranking=ranking, model=model, embedder_for=embedder_for)
    approx = " (approximate index)" if payload["index"]["approximate"] else ""
    rows = (f"{len(payload['appearances'])} appearances from " if "appearances" in payload else "")
    click.echo(f"{rows}{len(payload['hits'])} hits{approx}; {payload['same_person']['note']}")
    if "appearances" in payload:
        _echo_ranked(payload["appearances"], lambda a: (
            f"{a['rank']:4d}  {a['similarity']:.3f}{_p_text(a)}  {a['camera']:>8s}  "
            f"{format_time(a['start'])}-{format_time(a['end'])}  {a['frames']} frame{'s' * (a['frames'] != 1)}  "
            f"best: id {a['best']['hit']}"))
    else:
        _echo_ranked(payload["hits"], lambda h: (
            f"{h['rank']:4d}  {h['similarity']:.3f}{_p_text(h)}  {h['camera']:>8s}  "
            f"{format_time(h['time']):>8s}  {h['source']} frame {h['frame']}  id {h['id']}"))
    click.echo(str(page))


SHOWN_ROWS = 10            # result rows `search` prints (all are in results.json)


def _p_text(row: dict) -> str:
    return "" if row["same_person"] is None else f"  P {row['same_person']:.2f}"


def _echo_ranked(rows: list[dict], line) -> None:
    """The first rows, with the same-person line before the first unlikely one."""
    cut = next((k for k, r in enumerate(rows) if r["likely"] is False), None)
    for k, row in enumerate(rows[:SHOWN_ROWS]):
        if k == cut:
            click.echo("---- not likely the same person below ----")
        click.echo(line(row))


@cli.command("calibrate")
@click.option("--model", required=True,
              help="student checkpoint (.pt) or two-step teacher config (.yaml)")
@click.option("--dataset", type=click.Choice(["prw", "cuhk-sysu"]), required=True)
@click.option("--root", type=click.Path(), required=True, help="dataset folder as released")
@click.option("--threshold", type=FiniteFloat(0, 1, min_open=True, max_open=True),
              default=DEFAULT_THRESHOLD, show_default=True,
              help="P(same person) from which a result is 'likely the same person'")
@click.option("--no-measure", is_flag=True, help="skip measuring the line on the test split")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--no-progress", is_flag=True, help="no progress bar")
@friendly_errors
def calibrate_cmd(model, dataset, root, threshold, no_measure, device, batch_size, no_progress):
    """Fit MODEL's "same person" probability on the training split's identities (a logistic
    on cosine similarity) and store it beside MODEL, so that searches draw the line; prints
    the file last."""
    from pipeline.benchmark.calibration import calibrate  # optional: PyTorch
    c, path, held_out = calibrate(model, dataset, root, device=device, batch_size=batch_size,
                                  threshold=threshold, measure=not no_measure,
                                  progress=not no_progress)
    click.echo(f"fit on {c.n_pos} same-person and {c.n_neg} different-person pairs: "
               f"P >= {c.threshold:g} from similarity {c.similarity_at_threshold:.3f}")
    if held_out is not None:
        click.echo(f"test split ({held_out['pairs_same']} same, {held_out['pairs_different']} "
                   f"different pairs): precision {100 * held_out['precision']:.1f}%, "
                   f"recall {100 * held_out['recall']:.1f}% of 'likely the same person'")
    click.echo(str(path))


@cli.group("gallery")
def gallery_group():
    """Look after a footage gallery folder."""


@gallery_group.command("merge")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--index", "index_kind", type=click.Choice(INDEX_KINDS), default=None,
              help="the merged gallery's index (default: the first input's kind)")
@click.option("--retrain", is_flag=True,
              help="ivfpq: train and encode the merged gallery afresh (inputs trained apart)")
@friendly_errors
def gallery_merge_cmd(out, inputs, index_kind, retrain):
    """Merge the galleries IN... (same model and settings, different footage, e.g. made with
    `index --shard-of K/N`) into a new gallery OUT; prints OUT last. ivfpq inputs that share
    one training (`index --ivfpq-trained`) are merged on disk, nothing encoded again."""
    m = merge_galleries(out, inputs, index_kind=index_kind, tracks=make_track_table,
                        retrain=retrain)
    click.echo(f"merged {len(inputs)} galleries: {m.frames} frames, {m.detections} people, "
               f"{m.index.kind} index")
    click.echo(str(out))


@gallery_group.command("upgrade")
@click.argument("directory", type=click.Path(file_okay=False))
@friendly_errors
def gallery_upgrade_cmd(directory):
    """Bring the gallery at DIRECTORY to this version: a gallery made before galleries stored
    tracks gets them, linked from its stored detections (no model runs); an ivfpq gallery made
    before re-scoring files gets one, written from its segments."""
    before = read_manifest(directory)        # None: upgrade_gallery says what is missing
    had = before.index.params if before else {}
    m, changed = upgrade_gallery(directory)
    click.echo(f"{directory}: {'linked' if changed else 'already has'} {m.tracks.tracks} tracks "
               f"of {m.detections} people")
    if RESCORE in m.index.params and RESCORE not in had:
        record = m.index.params[RESCORE]
        click.echo(f"{directory}: added its re-scoring file {IVFPQ_FOLDER}/{record['file']} "
                   f"({record['bytes']:,} bytes)")


@gallery_group.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@friendly_errors
def gallery_verify_cmd(directory, as_json):
    """Read every segment, index and tracks file of the gallery at DIRECTORY (and the segments
    an unfinished index run left pending) and check them against its manifest; prints one
    line per damaged file (and the repair) and exits 1, or "ok"."""
    report = verify_gallery(directory)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    elif report.ok:
        click.echo(f"{directory}: ok ({report.segments} segments, {report.detections} people, "
                   "every file readable)")
    else:
        click.echo("\n".join(report.lines()))
    if not as_json and report.pending_line():
        click.echo(report.pending_line())
    if not report.ok:
        raise SystemExit(1)


@gallery_group.command("repair")
@click.argument("directory", type=click.Path(file_okay=False))
@friendly_errors
def gallery_repair_cmd(directory):
    """Set the damaged segments of the gallery at DIRECTORY aside (into DIRECTORY/damaged/),
    rebuild its index from the intact ones, and list the frames to re-index (run the same
    `index` command again: it embeds only the frames the gallery lacks)."""
    r = repair_gallery(directory, tracks=make_track_table)
    if r.manifest is None:
        click.echo(f"{directory}: nothing to repair")
        return
    for d in r.dropped:
        click.echo(d.describe())
    tracks = f", {r.manifest.tracks.tracks} tracks" if r.manifest.tracks else ""
    click.echo(f"{directory}: index{' and tracks' if tracks else ''} rebuilt from "
               f"{len(r.manifest.segments)} intact segments ({r.manifest.frames} frames, "
               f"{r.manifest.detections} people{tracks})")
    if r.record is not None:
        click.echo(f"frames to re-index listed in {r.record}: run the same `index` command on "
                   "the same sources again; it embeds only the frames the gallery lacks")


@gallery_group.command("info")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@friendly_errors
def gallery_info_cmd(directory, as_json):
    """Detections, frames, cameras, the index kind and its parameters, bytes on disk per part
    and the model of the gallery at DIRECTORY."""
    info = gallery_summary(open_gallery(directory))
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    index = info["index"]
    params = ", ".join(f"{k} {v}" for k, v in index.items()
                       if k in ("factory", "trained_on", "nprobe", "rescore_factor"))
    click.echo(f"{info['gallery']}: {info['frames']} frames, {info['detections']} people, "
               f"{len(info['cameras'])} cameras ({', '.join(info['cameras'])})")
    click.echo(f"model: {info['model']['kind']} {info['model']['name']}")
    click.echo(f"index: {index['kind']} ({'approximate' if index['approximate'] else 'exact'}"
               f"{', ' + params if params else ''})")
    tracks = info["tracks"]
    click.echo(f"tracks: {tracks['tracks']} ({tracks['kind']} index, {tracks['pooling']} pooling)"
               if tracks else f"tracks: none (made by an older version; `python cli.py gallery "
               f"upgrade {directory}` adds them)")
    click.echo("bytes: " + ", ".join(f"{k} {v:,}" for k, v in info["bytes"].items()))


@cli.command("serve")
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (the default serves this machine only)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--model", default=None, help="the gallery's model at another path")
@click.option("--device", default="cpu", show_default=True)
@friendly_errors
def serve_cmd(gallery_dir, host, port, model, device):
    """A local web app over a gallery: browse frames, click a person or drop a picture."""
    import uvicorn  # optional: the web server, only this command needs it

    from pipeline.footage.app import create_app  # optional: PyTorch (it embeds dropped pictures)
    app = create_app(gallery_dir, model=model, device=device)
    click.echo(f"serving {gallery_dir} on http://{host}:{port} (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


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
    base = load_config(config_path, StudentConfig, overrides)
    try:
        grid = term_variants(base.distill.enabled_terms(), variants) + \
            [parse_arm(a) for a in arms]
        config = str(Path(config_path).resolve())
        runs = plan_runs(config, grid, backbones, seeds, tuple(overrides))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if not grid:
        raise click.UsageError("nothing to run: no --variants and no --arm")
    if not seeds:
        raise click.UsageError("--seeds is empty")
    click.echo(f"{len(runs)} runs ({len(grid)} variants x {len(backbones)} backbones x "
               f"{len(seeds)} seeds), {jobs} at a time")
    command = "python cli.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table, failures = run_ablation(
        config, Path(out_dir), runs, runs_dir=Path(runs_dir) if runs_dir else None,
        device=device, jobs=jobs, teacher_config=teacher_config, command=command,
        echo=click.echo)
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
    """The whole pipeline on synthetic data: data, teachers, cache, two students, evaluation,
    then the distilled student searching synthetic footage; prints the results page last."""
    run_demo(device)


if __name__ == "__main__":
    sys.exit(cli())
