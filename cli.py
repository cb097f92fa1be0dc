#!/usr/bin/env python
"""Command line of the person-search toolkit. Parses options and calls pipeline/ and cache/.

Each command imports its implementation lazily, so ``--help`` stays fast.
"""
from __future__ import annotations

import functools
import sys

import click


def friendly_errors(fn):
    """Turn the project's own input errors into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline.config import ConfigError
        from pipeline.data.records import DatasetError
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
    from pipeline.data import read_dataset
    from pipeline.data.inspect import export_csv, format_table, split_summary
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
    from pipeline.data.synthetic.world import SyntheticWorldError, parse_size
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
    from pipeline.data.synthetic import SyntheticWorldError, generate
    try:
        dataset = generate(fmt, out, identities=identities, images=images, size=size,
                           cameras=cameras, seed=seed, progress=True)
    except SyntheticWorldError as e:
        raise click.UsageError(str(e)) from None
    labeled = sum(int((r.pids >= 0).sum()) for r in dataset.train + dataset.test)
    boxes = sum(len(r.boxes) for r in dataset.train + dataset.test)
    extra = (f", galleries {sorted(dataset.galleries)}" if dataset.galleries else "")
    click.echo(f"{fmt}: {len(dataset.train)} train + {len(dataset.test)} test images, "
               f"{boxes} boxes ({labeled} labeled), {identities} identities, "
               f"{len(dataset.queries)} queries{extra}")
    click.echo(str(dataset.root))


# ---------------------------------------------------------------- teachers and cache (stage one)


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
    import json
    from pathlib import Path

    from pipeline.engine.checkpoint import CheckpointError
    from pipeline.engine.student import CacheContractError, train_student
    from pipeline.engine.trainer import NonFiniteLossError
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


# ---------------------------------------------------------------- demo

@cli.command()
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda for the larger GPU version")
@friendly_errors
def demo(device):
    """The whole pipeline on synthetic data: data, teachers, cache, two students, evaluation."""
    from pipeline.demo import run_demo
    run_demo(device)


if __name__ == "__main__":
    sys.exit(cli())
