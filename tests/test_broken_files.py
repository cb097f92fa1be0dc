"""Every command that reads a teacher cache, a checkpoint or a results file, fed each kind of
broken file: one line that names the file and what is wrong, a non-zero exit code, never a
traceback and never PyTorch's advice to load the file with weights_only=False."""
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cli import cli
from pipeline.models.checkpoint import CHECKPOINT_FORMAT
from pipeline.benchmark.results_file import write_results
from pipeline.runtime.types import Detections
from teacher_helpers import TINY_TEACHER
from tiny_cache import write_tiny_cache, write_tiny_prw

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = {"backbone": "resnet18", "norm": "batch", "min_size": 96, "max_size": 128,
              "anchor_sizes": [16, 32, 64], "rpn_pre_nms_top_n_train": 100,
              "rpn_post_nms_top_n_train": 20, "rpn_pre_nms_top_n_test": 50,
              "rpn_post_nms_top_n_test": 10, "roi_output_size": 7,
              "roi_batch_size_per_image": 8, "embedding_dim": 16, "oim_queue_size": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 6-frame PRW-format world, a sound teacher cache, sound files of every kind to break."""
    from pipeline.data import read_dataset
    base = tmp_path_factory.mktemp("broken")
    root = write_tiny_prw(base / "prw")
    data = read_dataset("prw", root)
    good = {"cache": write_tiny_cache(data.train, base / "good_cache.h5")}
    torch.save({"format": CHECKPOINT_FORMAT, "model": {"w": torch.ones(300, 300)},
                "model_class": "x.Y", "model_args": {}}, base / "good.pt")
    good["checkpoint"] = base / "good.pt"
    good["results"] = write_results(
        base / "good_results.h5", "prw", [r.name for r in data.gallery],
        Detections.empty(8, len(data.gallery)), [q.image for q in data.queries],
        np.stack([q.box for q in data.queries]), np.ones((len(data.queries), 8)))
    return {"base": base, "root": root, "data": data, "good": good}


# ------------------------------------------------------------------------------ broken files

def wrong_schema(kind: str, path: Path) -> None:
    """A sound file of the right container format whose content is not what the reader needs."""
    if kind == "cache":  # the teacher-cache schema attribute, but no datasets
        with h5py.File(path, "w") as f:
            f.attrs["schema"], f.attrs["schema_version"] = "teacher-cache", 1
    elif kind == "checkpoint":  # the format tag, but no weights or model arguments
        torch.save({"format": CHECKPOINT_FORMAT, "epoch": 3}, path)
    else:  # a results file without the query group
        with h5py.File(path, "w") as f:
            f.attrs["schema"], f.attrs["dataset"] = "person-search-results/1", "prw"
            f.create_dataset("gallery/scores", data=np.zeros(3))


def other_kind(kind: str, path: Path, good: dict) -> None:
    """A sound file of another kind: a results file as cache, a bare state dict as checkpoint,
    a teacher cache as results file."""
    if kind == "checkpoint":
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    else:
        path.write_bytes(good["results" if kind == "cache" else "cache"].read_bytes())


BREAKS = {  # kind of damage -> (writer, words the message must hold)
    "empty": (lambda kind, p, good: p.write_bytes(b""), "empty"),
    "truncated": (lambda kind, p, good: p.write_bytes(good[kind].read_bytes()[:3000]),
                  "truncated"),
    "garbage": (lambda kind, p, good: p.write_bytes(np.random.default_rng(0).bytes(5000)),
                "not a"),
    "wrong schema": (lambda kind, p, good: wrong_schema(kind, p), "unusable"),
    "other kind": (other_kind, "unusable"),
}


# ------------------------------------------------------------------------------ commands

def student_config(tmp: Path, root: Path, *, distill: bool) -> Path:
    cfg = {"data": {"dataset": "prw", "root": str(root), "workers": 0},
           "model": TINY_MODEL,
           "distill": {"feature": {"enabled": True}} if distill else {},
           "train": {"epochs": 1, "batch_size": 6, "warmup_iters": 1, "device": "cpu"},
           "run_dir": str(tmp / "run")}
    path = tmp / "student.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def teacher_config(tmp: Path, root: Path) -> Path:
    tree = {k: dict(v) for k, v in TINY_TEACHER.items()}
    tree["data"]["root"] = str(root)
    tree["out_dir"], tree["cache"]["dir"] = str(tmp / "teachers"), str(tmp / "cache")
    path = tmp / "teacher.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def place_teachers(tmp: Path, root: Path, broken_part: Path | None) -> Path:
    """A teacher config whose detector.pt is ``broken_part`` (reid.pt: a placeholder)."""
    config = teacher_config(tmp, root)
    (tmp / "teachers").mkdir()
    (tmp / "teachers" / "reid.pt").write_bytes(b"placeholder")
    if broken_part is not None:
        broken_part.rename(tmp / "teachers" / "detector.pt")
    else:
        (tmp / "teachers" / "detector.pt").write_bytes(b"placeholder")
    return config


def cmd_build_cache_existing(tmp, root, f):
    """build-cache when the cache file it would write exists: it is verified, not trusted."""
    from cache.key import cache_path
    from pipeline.config import load_config
    from pipeline.config.teacher import TeacherConfig
    config = place_teachers(tmp, root, None)
    target = cache_path(load_config(config, TeacherConfig))
    target.parent.mkdir(parents=True)
    f.rename(target)
    return ["build-cache", "--config", str(config), "--no-progress"], target


def cmd_student_resume(tmp, root, f):
    config = student_config(tmp, root, distill=False)
    (tmp / "run").mkdir()
    target = tmp / "run" / "checkpoint_last.pt"
    f.rename(target)
    return ["train-student", "--config", str(config), "--resume", "--no-progress"], target


def cmd_teacher_resume(tmp, root, f):
    config = teacher_config(tmp, root)
    (tmp / "teachers" / "detector").mkdir(parents=True)
    target = tmp / "teachers" / "detector" / "checkpoint_last.pt"
    f.rename(target)
    return ["train-teacher", "--part", "detector", "--config", str(config), "--resume",
            "--no-progress"], target


def cmd_build_cache_teacher(tmp, root, f):
    config = place_teachers(tmp, root, f)
    return ["build-cache", "--config", str(config), "--no-progress"], \
        tmp / "teachers" / "detector.pt"


def cmd_evaluate_teacher(tmp, root, f):
    config = place_teachers(tmp, root, f)
    return ["evaluate", "--dataset", "prw", "--root", str(root), "--teacher-config",
            str(config), "--out-dir", str(tmp / "eval")], tmp / "teachers" / "detector.pt"


COMMANDS = {  # file kind -> {command: (tmp, root, broken file) -> (cli args, the file read)}
    "cache": {
        "cache info": lambda tmp, root, f: (["cache", "info", str(f)], f),
        "cache verify": lambda tmp, root, f: (["cache", "verify", str(f)], f),
        "train-student": lambda tmp, root, f: (
            ["train-student", "--config", str(student_config(tmp, root, distill=True)),
             "--set", f"cache={f}", "--no-progress"], f),
        "build-cache (cache exists)": cmd_build_cache_existing,
    },
    "checkpoint": {
        "evaluate --checkpoint": lambda tmp, root, f: (
            ["evaluate", "--dataset", "prw", "--root", str(root), "--checkpoint", str(f),
             "--out-dir", str(tmp / "eval")], f),
        "train-student --resume": cmd_student_resume,
        "train-teacher --resume": cmd_teacher_resume,
        "build-cache (teacher detector.pt)": cmd_build_cache_teacher,
        "evaluate --teacher-config": cmd_evaluate_teacher,
    },
    "results": {
        "evaluate --results": lambda tmp, root, f: (
            ["evaluate", "--dataset", "prw", "--root", str(root), "--results", str(f)], f),
    },
}
CASES = [(kind, command, damage) for kind, commands in COMMANDS.items()
         for command in commands for damage in BREAKS]


@pytest.mark.parametrize("kind, command, damage", CASES)
def test_a_broken_file_is_refused_in_one_clear_line(world, tmp_path, kind, command, damage):
    write, words = BREAKS[damage]
    broken = tmp_path / f"broken.{'pt' if kind == 'checkpoint' else 'h5'}"
    write(kind, broken, world["good"])
    args, target = COMMANDS[kind][command](tmp_path, world["root"], broken)
    result = CliRunner().invoke(cli, args)
    output = result.output
    assert result.exit_code != 0, output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in output and "weights_only" not in output
    messages = [line for line in output.splitlines()
                if line.startswith(("Error:", "problem:"))]
    assert len(messages) == 1 and output.rstrip().endswith(messages[0]), output
    assert str(target) in messages[0], messages[0]
    assert words in messages[0], messages[0]
