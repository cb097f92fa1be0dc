"""The real configs at real size, end to end: teacher training, the cache, a ResNet-50 student
with every distillation term, evaluation -- each for one or two steps on full-size (1920x1080)
frames, with only the overrides of bench/bench_fullsize.py (one epoch, no ImageNet download,
device, the batch sizes a 2-frame training split allows).

The slowest test of the suite (about 6.5 minutes of one core under `make test`; BENCHMARKS.md has the time and
the peak memory of each step): ``pytest -m "not fullsize"`` leaves it out of a quick local run.
On a machine with CUDA it runs there, bf16 autocast included.
"""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.bench_fullsize import STUDENT_CONFIG, TEACHER_CONFIG, run_steps
from cli import cli

pytestmark = pytest.mark.fullsize
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def cli_runner(steps: list):
    """Runs each step in this process (no interpreter start per step); fails on any error."""
    def run(name: str, args: list[str]) -> str:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"{name}: {result.output}\n{result.exception!r}"
        steps.append((name, result))
        return result.stdout.strip().splitlines()[-1]
    return run


def test_real_configs_on_full_size_frames(tmp_path):
    from cache import TeacherCache
    from pipeline.models.checkpoint import read_checkpoint
    steps: list = []
    out = run_steps(cli_runner(steps), tmp_path, DEVICE)
    names = [name for name, _ in steps]
    assert names == ["make-synthetic", "inspect-dataset", "train-teacher detector",
                     "train-teacher reid", "build-cache", "train-student", "evaluate"]
    for name, result in steps:
        if name not in ("make-synthetic", "inspect-dataset"):
            assert result.stderr.strip().splitlines()[-1].startswith("peak memory: "), name
    # the frames are full size and the cache covers them
    with TeacherCache(out["cache"]) as cache:
        assert cache.widths.tolist() == [1920, 1920] and cache.heights.tolist() == [1080, 1080]
        assert cache.meta.float16 and cache.meta.has_flip and cache.meta.embedding_dim == 256
    # the networks are those of the real configs
    teachers = tmp_path / "teachers"
    detector = read_checkpoint(teachers / "detector.pt")["model_args"]
    assert (detector["backbone"], detector["fpn_channels"], detector["min_size"],
            detector["max_size"]) == ("resnet50", 256, 900, 1500)
    assert read_checkpoint(teachers / "reid.pt")["model_args"]["backbone"] == "resnet50"
    student = read_checkpoint(Path(out["run_dir"]) / "checkpoint_last.pt")
    model = student["config"]["model"]
    assert (model["backbone"], model["min_size"], model["max_size"]) == ("resnet50", 900, 1500)
    assert set(student["config"]["distill"]) >= {"lut", "feature", "relation", "detector",
                                                 "jitter"}
    assert all(student["config"]["distill"][t]["enabled"]
               for t in ("lut", "feature", "relation", "detector", "jitter"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_queries"] == 4 and 0.0 <= metrics["mAP"] <= 1.0
    assert TEACHER_CONFIG["prw"] == "configs/teacher/prw.yaml"
    assert STUDENT_CONFIG["prw"] == "configs/student/prw-r50-all.yaml"


def test_full_size_worlds_scale_people_with_the_frame(tmp_path):
    """make-synthetic --size 1920x1080 in both layouts: people are as tall, relative to the
    frame, as in a small world, and the readers read it back."""
    from pipeline.data import read_dataset
    from pipeline.data.synthetic import make_synthetic
    from pipeline.data.synthetic.styles import DEFAULT_STYLE
    from pipeline.data.synthetic.world import plan_world
    low, high = DEFAULT_STYLE.height_fraction
    for fmt in ("prw", "cuhk-sysu"):
        world = plan_world(identities=4, images=102, size=(1920, 1080), cameras=3, seed=0)
        heights = [p.draw_box[3] - p.draw_box[1] for s in world.scenes for p in s.people]
        assert min(heights) >= low * 1080 - 1e-6
        assert max(heights) <= high * 1080 + 1e-6
    root = make_synthetic("prw", tmp_path / "prw", identities=4, images=4, size=(1920, 1080))
    data = read_dataset("prw", root)
    for record in data.train + data.gallery:
        assert (record.width, record.height) == (1920, 1080)
        tall = (record.boxes[:, 3] - record.boxes[:, 1]) / record.height
        assert tall.max() >= 0.3
