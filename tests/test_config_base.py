"""``_base_`` includes in config files: deep merge, relative paths, cycles refused."""
import pytest

from pipeline.config import ConfigError, load_config, read_yaml_tree
from test_config import Experiment


def test_base_include_deep_merges_relative_to_the_file(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.yaml").write_text(
        "data:\n  dataset: cuhk-sysu\n  workers: 4\ntrain:\n  lr: 0.5\n  milestones: [1, 2]\n")
    (tmp_path / "child.yaml").write_text(
        "_base_: common/base.yaml\ndata:\n  workers: 7\ntrain:\n  milestones: [7]\n")
    cfg = load_config(tmp_path / "child.yaml", Experiment, ["train.epochs=9"])
    assert cfg.data.dataset == "cuhk-sysu" and cfg.data.workers == 7
    assert cfg.train.lr == 0.5 and cfg.train.milestones == (7,) and cfg.train.epochs == 9


def test_base_list_and_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  lr: 1.0\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\ntrain:\n  epochs: 4\n")
    (tmp_path / "c.yaml").write_text("data:\n  flip: false\n")
    (tmp_path / "d.yaml").write_text("_base_: [b.yaml, c.yaml]\ntrain:\n  optimizer: adamw\n")
    assert read_yaml_tree(tmp_path / "d.yaml") == {
        "train": {"lr": 1.0, "epochs": 4, "optimizer": "adamw"}, "data": {"flip": False}}


def test_base_cycle_and_missing_are_refused(tmp_path):
    (tmp_path / "x.yaml").write_text("_base_: y.yaml\n")
    (tmp_path / "y.yaml").write_text("_base_: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml", Experiment)
    (tmp_path / "z.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found.*missing.yaml"):
        load_config(tmp_path / "z.yaml", Experiment)
    (tmp_path / "w.yaml").write_text("_base_: 3\n")
    with pytest.raises(ConfigError, match="_base_ must be"):
        load_config(tmp_path / "w.yaml", Experiment)
