"""`make teacher-cache` (= build-cache --train-missing) on a fresh clone: the synthetic world of
the config is made when missing, the teachers are trained, the cache is built and verified; a
missing real release is one message saying where it goes and how to check it."""
import inspect
from pathlib import Path

import yaml
from click.testing import CliRunner

from cli import cli
from pipeline.data.synthetic import make_synthetic
from teacher_helpers import TINY_TEACHER

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, data: dict) -> Path:
    tree = {k: dict(v) for k, v in TINY_TEACHER.items()}
    tree["data"].update(data)
    tree["detector"]["epochs"] = 1
    tree["reid"]["epochs"] = 1
    tree["out_dir"] = str(tmp_path / "teachers")
    tree["cache"]["dir"] = str(tmp_path / "cache")
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_missing_synthetic_world_is_made_then_teachers_and_a_verified_cache(tmp_path):
    world = tmp_path / "data" / "synthetic-prw"
    config = write_config(tmp_path, {"root": str(world), "synthetic": {
        "identities": 8, "images": 16, "size": "128x96", "cameras": 2, "seed": 3}})
    result = CliRunner().invoke(cli, ["build-cache", "--config", str(config), "--train-missing",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{world} does not exist: making the synthetic prw world" in result.stderr
    assert (world / "query_info.txt").is_file() and (world / "synthetic.json").is_file()
    cache = Path(result.stdout.strip().splitlines()[-1])
    assert cache.is_file() and cache.parent == tmp_path / "cache"
    assert f"verified: {cache} holds every training image of {world}" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("peak memory: ")
    again = CliRunner().invoke(cli, ["build-cache", "--config", str(config), "--no-progress"])
    assert again.exit_code == 0 and "making" not in again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(cache)


def test_a_missing_release_says_where_it_goes_and_how_to_check_it(tmp_path):
    release = tmp_path / "PRW"
    config = write_config(tmp_path, {"root": str(release)})
    for args in (["build-cache", "--config", str(config), "--train-missing"],
                 ["train-teacher", "--part", "detector", "--config", str(config)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert f"{release} does not exist: download the PRW release" in lines[0]
        assert "frames/, annotations/" in lines[0]
        assert f"inspect-dataset --dataset prw --root {release} --check" in lines[0]
        assert not release.exists()


def test_the_default_teacher_config_of_make_describes_its_synthetic_world():
    from pipeline.config import load_config
    from pipeline.config.teacher import TeacherConfig
    from pipeline.demo import CPU_DATA, DATA_ROOT, TEACHER_CONFIG
    makefile = (ROOT / "Makefile").read_text()
    assert f"CONFIG     ?= {TEACHER_CONFIG}" in makefile
    cfg = load_config(ROOT / TEACHER_CONFIG, TeacherConfig)
    assert cfg.data.root == str(DATA_ROOT) and cfg.data.synthetic is not None
    # `make demo` makes the same world on a CPU: make-synthetic's defaults
    defaults = inspect.signature(make_synthetic).parameters
    w = cfg.data.synthetic
    assert CPU_DATA == [] and (w.identities, w.images, w.size, w.cameras, w.seed, w.style) == (
        defaults["identities"].default, defaults["images"].default,
        "x".join(map(str, defaults["size"].default)), defaults["cameras"].default,
        defaults["seed"].default, defaults["style"].default)
    for real in ("prw", "cuhk-sysu"):
        assert load_config(ROOT / f"configs/teacher/{real}.yaml", TeacherConfig).data.synthetic \
            is None


def test_commands_started_together_make_one_world(tmp_path):
    """Two processes that both find the synthetic world missing (make demo's two teachers)
    each make it beside the root; one rename wins and neither sees half a world."""
    import multiprocessing

    from pipeline.data import read_dataset
    root = tmp_path / "world"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_ensure_world, args=(str(root),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]   # no partial folder left
    assert len(read_dataset("prw", root).train) == 8


def _ensure_world(root: str) -> None:
    from pipeline.config.data import DataConfig, SyntheticWorldConfig
    from pipeline.data import ensure_dataset
    ensure_dataset(DataConfig(dataset="prw", root=root, synthetic=SyntheticWorldConfig(
        identities=8, images=16, size="64x48", seed=0)), say=lambda text: None)
