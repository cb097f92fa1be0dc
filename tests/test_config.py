"""The typed config loader: YAML -> frozen dataclass tree, --set overrides, clear errors."""
from dataclasses import dataclass, field, FrozenInstanceError

import pytest

from pipeline.config import (ConfigError, fingerprint, from_dict, load_config, parse_override,
                             save_config)
from pipeline.config.data import DataConfig


@dataclass(frozen=True)
class Train:
    lr: float = 0.1
    epochs: int = 2
    milestones: tuple[int, ...] = (1,)
    optimizer: str = "sgd"
    resume_from: str | None = None


@dataclass(frozen=True)
class Experiment:
    data: DataConfig = field(default_factory=DataConfig)
    train: Train = field(default_factory=Train)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("data:\n  dataset: cuhk-sysu\n  workers: 3\ntrain:\n  lr: 0.01\n")
    cfg = load_config(path, Experiment, ["train.epochs=5", "data.flip=false",
                                         "train.milestones=[3, 4]", "train.lr=1"])
    assert cfg.data.dataset == "cuhk-sysu" and cfg.data.workers == 3
    assert cfg.train.epochs == 5 and cfg.data.flip is False
    assert cfg.train.milestones == (3, 4)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(FrozenInstanceError):
        cfg.train.lr = 3.0


def test_save_and_reload_is_identity(tmp_path):
    cfg = from_dict(Experiment, {"train": {"resume_from": "x.pt"}})
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml", Experiment)
    assert again == cfg
    assert fingerprint(again) == fingerprint(cfg)
    assert fingerprint(from_dict(Experiment, {}, ["train.lr=0.2"])) != fingerprint(cfg)


@pytest.mark.parametrize("override, words", [
    ("train.nope=1", "unknown key"),
    ("train.epochs=1.5", "expected an integer"),
    ("data.flip=yes please", "expected true or false"),
    ("train.lr=abc", "expected a number"),
    ("noequals", "key=value"),
    ("train.lr.x=1", "train.lr"),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(Experiment, {}, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", Experiment)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad, Experiment)


def test_override_value_is_parsed_as_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=none") == ("a", "none")
    assert parse_override("a=null") == ("a", None)
    assert from_dict(Experiment, {}, ["train.resume_from=null"]).train.resume_from is None
