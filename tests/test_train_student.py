"""`train-student` end to end on a tiny synthetic world and a tiny teacher cache: the cache
contract (refusals), cached boxes under flips, exact resume, the shipped configs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.config import load_config, to_dict
from pipeline.config.student import StudentConfig
from pipeline.distill.student import TeacherMismatchError
from pipeline.stages.student import (CacheContractError, cache_needs, open_checked_cache,
                                     train_student)

ROOT = Path(__file__).resolve().parent.parent
TEACHER_DIM = 16
ALL_TERMS = ("lut", "feature", "relation", "detector", "jitter")


# ------------------------------------------------------------------------------ helpers

def tiny_cache(records, path, *, dataset="prw", flip=True, proposals=True, jitter=True,
               dim=TEACHER_DIM, seed=0, fingerprint_records=None):
    """A teacher cache of random teacher outputs for ``records``, written with cache/'s writer."""
    from tiny_cache import write_tiny_cache
    return write_tiny_cache(records, path, dataset=dataset, flip=flip, proposals=proposals,
                            jitter=jitter, dim=dim, seed=seed,
                            fingerprint_records=fingerprint_records)


TINY_MODEL = {"backbone": "resnet18", "norm": "batch", "min_size": 96, "max_size": 128,
              "anchor_sizes": [16, 32, 64], "rpn_pre_nms_top_n_train": 200,
              "rpn_post_nms_top_n_train": 40, "rpn_pre_nms_top_n_test": 100,
              "rpn_post_nms_top_n_test": 20, "rpn_batch_size_per_image": 64,
              "roi_output_size": 7, "roi_batch_size_per_image": 16,
              "embedding_dim": TEACHER_DIM, "oim_queue_size": 8}


def write_config(tmp_path, root, *, terms=ALL_TERMS, cache=None, flip=True, epochs=1,
                 batch_size=None, run="run", schedule="cosine", n_train=None, balance=None):
    distill = {t: {"enabled": True} for t in terms}
    if balance:
        distill["balance"] = balance
    if "detector" in terms:
        distill["detector"]["num_proposals"] = 8
    cfg = {
        "data": {"dataset": "prw", "root": str(root),
                 "flip": flip, "workers": 0},
        "model": TINY_MODEL, "distill": distill,
        "train": {"epochs": epochs, "batch_size": batch_size or 4, "lr": 0.01,
                  "warmup_iters": 1, "schedule": schedule, "milestones": [], "device": "cpu",
                  "seed": 0},
        "cache": str(cache) if cache else None,
        "teacher_config": "configs/synthetic/teacher.yaml",
        "run_dir": str(tmp_path / run),
    }
    path = tmp_path / f"{run}.yaml"
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def world(synthetic_prw, tmp_path):
    """(root, data, cache path with every view and key) over the tiny synthetic PRW world."""
    from pipeline.data import read_dataset
    data = read_dataset("prw", synthetic_prw)
    cache = tiny_cache(data.train, tmp_path / "teacher.h5")
    return synthetic_prw, data, cache


@pytest.fixture
def small_world(tmp_path):
    """Like ``world`` over 6 noise images of 128x96: for tests that train several steps."""
    from pipeline.data import read_dataset
    from tiny_cache import write_tiny_prw
    root = write_tiny_prw(tmp_path / "prw6")
    data = read_dataset("prw", root)
    return root, data, tiny_cache(data.train, tmp_path / "teacher6.h5")


# ------------------------------------------------------------------------------ configs

SHIPPED = sorted(ROOT.glob("configs/student/*.yaml")) + \
    sorted(ROOT.glob("configs/synthetic/student-*.yaml"))


def test_the_eighteen_variants_are_shipped():
    names = {p.name for p in SHIPPED}
    for ds in ("prw", "cuhk-sysu"):
        for b in ("r18", "r50"):
            for d in ("none", "lut", "all"):
                assert f"{ds}-{b}-{d}.yaml" in names
    for b in ("r18", "r50"):
        for d in ("none", "lut", "all"):
            assert f"student-{b}-{d}.yaml" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_student_configs_load(path):
    cfg = load_config(path, StudentConfig)
    stem = path.stem.replace("student-", "")
    backbone, variant = stem.split("-")[-2:]
    assert cfg.model.backbone == {"r18": "resnet18", "r50": "resnet50"}[backbone]
    assert cfg.distill.enabled_terms() == {"none": [], "lut": ["lut"], "all": list(ALL_TERMS),
                                           "distilled": ["lut", "feature", "relation"]}[variant]
    assert cfg.train.batch_size == 5
    if "synthetic" in str(path):
        assert cfg.data.root == "work/data/synthetic-prw"
        assert cfg.teacher_config == "configs/synthetic/teacher.yaml"
        assert cfg.train.device == "cpu" and cfg.model.min_size <= 320
    else:
        assert (cfg.model.min_size, cfg.model.max_size) == (900, 1500)
        assert cfg.teacher_config == f"configs/teacher/{cfg.data.dataset}.yaml"
    assert cfg.run_dir.startswith("work/runs/")
    # the student reads the data its teacher's cache was built from, and fits that cache
    from pipeline.config.teacher import TeacherConfig
    teacher = load_config(ROOT / cfg.teacher_config, TeacherConfig)
    assert (cfg.data.dataset, cfg.data.root) == (teacher.data.dataset, teacher.data.root)
    if cfg.distill.lut.enabled:
        assert cfg.model.embedding_dim == teacher.reid.embedding_dim
    if cfg.distill.detector.enabled:
        assert cfg.distill.detector.num_proposals <= teacher.cache.proposals_per_image


def test_what_each_variant_needs_from_the_cache():
    def needs(terms, flip=True):
        data = {"data": {"flip": flip}, "distill": {t: {"enabled": True} for t in terms}}
        from pipeline.config import from_dict
        return cache_needs(from_dict(StudentConfig, data))

    n = needs(())
    assert n.terms == () and n.keys == () and not n.flip
    n = needs(("lut",))  # the identity table is not per image: no flip views needed
    assert n.teacher_table and not n.flip and not n.proposals and n.keys == ()
    n = needs(ALL_TERMS)
    assert n.flip and n.proposals and n.jitter and n.teacher_table
    assert set(n.keys) == {"gt_features", "proposal_boxes", "proposal_logits",
                           "proposal_refined_boxes", "jitter_boxes", "jitter_features"}
    assert not needs(ALL_TERMS, flip=False).flip
    assert needs(("feature",)).keys == ("gt_features",)


# ------------------------------------------------------------------------------ the contract

def cfg_of(tmp_path, root, **kw):
    return load_config(write_config(tmp_path, root, **kw), StudentConfig)


def test_cache_of_another_split_is_refused(world, tmp_path):
    root, data, _ = world
    other = tiny_cache(data.train, tmp_path / "other.h5", fingerprint_records=data.train[:-1])
    with pytest.raises(CacheContractError, match="does not fit"):
        open_checked_cache(cfg_of(tmp_path, root, cache=other), data.train)


def test_cache_of_another_dataset_is_refused(world, tmp_path):
    root, data, _ = world
    other = tiny_cache(data.train, tmp_path / "cuhk.h5", dataset="cuhk-sysu")
    with pytest.raises(CacheContractError, match="cuhk-sysu|dataset"):
        open_checked_cache(cfg_of(tmp_path, root, cache=other), data.train)


def test_cache_without_flip_views_is_refused_only_when_flips_are_on(world, tmp_path):
    root, data, _ = world
    noflip = tiny_cache(data.train, tmp_path / "noflip.h5", flip=False)
    with pytest.raises(CacheContractError, match="flip"):
        open_checked_cache(cfg_of(tmp_path, root, cache=noflip, terms=("feature",)), data.train)
    open_checked_cache(cfg_of(tmp_path, root, cache=noflip, terms=("feature",), flip=False),
                       data.train)
    # the LUT alone reads no per-image targets: flips need no flipped teacher outputs
    open_checked_cache(cfg_of(tmp_path, root, cache=noflip, terms=("lut",)), data.train)


def test_cache_without_proposals_or_jitter_is_refused_for_those_terms(world, tmp_path):
    root, data, _ = world
    bare = tiny_cache(data.train, tmp_path / "bare.h5", proposals=False, jitter=False)
    with pytest.raises(CacheContractError, match="proposal"):
        open_checked_cache(cfg_of(tmp_path, root, cache=bare, terms=("detector",)), data.train)
    with pytest.raises(CacheContractError, match="jitter"):
        open_checked_cache(cfg_of(tmp_path, root, cache=bare, terms=("jitter",)), data.train)
    open_checked_cache(cfg_of(tmp_path, root, cache=bare, terms=("feature", "lut")), data.train)


def test_missing_cache_says_how_to_build_it(world, tmp_path):
    root, data, _ = world
    cfg = cfg_of(tmp_path, root, cache=tmp_path / "nope.h5")
    with pytest.raises(CacheContractError, match="make teacher-cache CONFIG="):
        open_checked_cache(cfg, data.train)


# ------------------------------------------------------------------------------ dataset

def mirror(boxes, width):
    out = boxes.clone()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def test_cached_boxes_follow_the_flip_exactly(world):
    from cache import TeacherCache
    from pipeline.distill.dataset import StudentDataset
    _, data, cache_path = world
    keys = ["gt_features", "proposal_boxes", "proposal_refined_boxes", "proposal_logits",
            "jitter_boxes", "jitter_features"]
    cache = TeacherCache(cache_path)
    for flip_prob in (0.0, 1.0):
        ds = StudentDataset(data.train, cache_path=cache_path, cache_keys=keys,
                            flip_prob=flip_prob, seed=0)
        for i in range(min(3, len(ds))):
            image, target = ds[i]
            flipped = bool(target["flipped"])
            assert flipped == (flip_prob == 1.0)
            view = cache.image_targets(data.train[i].name, flipped=flipped)
            width = image.shape[-1]
            for k in keys:
                expected = torch.from_numpy(np.asarray(view[k], np.float32))
                if k.endswith("boxes") and flipped:
                    expected = mirror(expected, width)
                assert target[k].dtype == torch.float32
                assert torch.equal(target[k], expected), (k, flip_prob)
            # the image boxes moved the same way
            rec = torch.from_numpy(data.train[i].boxes)
            assert torch.equal(target["boxes"], mirror(rec, width) if flipped else rec)


# ------------------------------------------------------------------------------ end to end

def test_train_student_command_end_to_end(world, tmp_path):
    from cli import cli
    from pipeline.models.checkpoint import read_checkpoint
    from pipeline.models.student import load_student
    root, data, cache = world
    config = write_config(tmp_path, root, cache=cache, batch_size=len(data.train))
    result = CliRunner().invoke(cli, ["train-student", "--config", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert run_dir == tmp_path / "run"
    for name in ("config.yaml", "cache.json", "git_revision.txt", "checkpoint_last.pt",
                 "losses.csv", "losses.png", "train_stats.json"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "cache.json").read_text())
    assert info["cache"] == str(cache) and info["flip_views_used"] is True
    assert set(info["terms"]) == set(ALL_TERMS) and info["split_fingerprint"]
    header = (run_dir / "losses.csv").read_text().splitlines()[0].split(",")
    for col in ("lr", "loss", "loss_oim", "loss_distill_feature", "loss_distill_relation",
                "loss_distill_jitter", "loss_distill_det_cls"):
        assert col in header
    assert json.loads((run_dir / "train_stats.json").read_text())["images"] > 0
    ckpt = read_checkpoint(run_dir / "checkpoint_last.pt")
    assert ckpt["model_args"]["identity_pids"] == [int(p) for p in data.train_identities()]
    assert ckpt["config"] == to_dict(load_config(config, StudentConfig))
    model = load_student(run_dir / "checkpoint_last.pt")  # from the checkpoint alone
    with torch.no_grad():
        out = model.detect([torch.rand(3, 96, 128)])
    assert out[0]["boxes"].shape[1] == 4


def test_cli_refuses_a_mismatched_cache_with_a_clear_message(world, tmp_path):
    from cli import cli
    root, data, _ = world
    bare = tiny_cache(data.train, tmp_path / "bare.h5", proposals=False)
    config = write_config(tmp_path, root, cache=bare, terms=("detector",))
    result = CliRunner().invoke(cli, ["train-student", "--config", str(config)])
    assert result.exit_code != 0
    assert "proposal" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("balance", [None, "uncertainty"])
def test_student_resume_gives_the_same_weights(small_world, tmp_path, balance):
    from pipeline.files import link_or_copy
    from pipeline.models.checkpoint import read_checkpoint
    root, data, cache = small_world
    bs = max(1, len(data.train) // 2 + len(data.train) % 2)  # 2 steps per epoch
    full = write_config(tmp_path, root, cache=cache, epochs=2, batch_size=bs, run="full",
                        balance=balance)
    train_student(full, progress=False)
    # simulate a crash after epoch 1: the run directory as it was then
    part = write_config(tmp_path, root, cache=cache, epochs=2, batch_size=bs, run="part",
                        balance=balance)
    (tmp_path / "part").mkdir()
    link_or_copy(tmp_path / "full" / "checkpoint_epoch001.pt", tmp_path / "part" / "checkpoint_last.pt")
    for name in ("config.yaml", "cache.json"):
        text = (tmp_path / "full" / name).read_text().replace(str(tmp_path / "full"),
                                                                str(tmp_path / "part"))
        (tmp_path / "part" / name).write_text(text)
    torch.manual_seed(1234)  # a fresh process would not share our RNG state
    train_student(part, resume=True, progress=False)
    a = read_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    b = read_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert a["global_step"] == b["global_step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    if balance == "uncertainty":   # the learned loss weights: trained, saved, restored, logged
        log_vars = {k: v for k, v in a["model"].items() if k.startswith("distiller.balance.")}
        assert "distiller.balance.log_vars.loss_oim" in log_vars
        assert all(v.item() != 0.0 for v in log_vars.values()), log_vars
        header = (tmp_path / "part" / "losses.csv").read_text().splitlines()[0].split(",")
        assert {"weight_loss_oim", "weight_loss_distill_feature", "loss_balance"} <= set(header)


def test_resume_with_another_config_is_refused(small_world, tmp_path):
    from pipeline.config import ConfigError
    root, data, cache = small_world
    config = write_config(tmp_path, root, cache=cache, batch_size=len(data.train))
    train_student(config, progress=False)
    with pytest.raises(ConfigError, match="train.lr"):
        train_student(config, ["train.lr=0.5"], resume=True, progress=False)
    from pipeline.stages.student import check_resume_config
    info = json.loads((tmp_path / "run" / "cache.json").read_text())
    grown = load_config(config, StudentConfig, ["train.epochs=5", "data.workers=2"])
    check_resume_config(tmp_path / "run", grown, info)  # a run may grow; no error
    other = tiny_cache(data.train, tmp_path / "other.h5", seed=3, flip=False)
    from cache import TeacherCache
    from pipeline.stages.student import cache_needs, cache_record
    with pytest.raises(CacheContractError, match="another teacher cache"):
        check_resume_config(tmp_path / "run", grown,
                            cache_record(TeacherCache(other), other, cache_needs(grown)))


def test_lut_with_another_feature_size_is_refused_before_training(world, tmp_path):
    root, data, _ = world
    wide = tiny_cache(data.train, tmp_path / "wide.h5", dim=24)
    config = write_config(tmp_path, root, cache=wide, terms=("lut",))
    with pytest.raises(TeacherMismatchError, match="model.embedding_dim: 24"):
        train_student(config, progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_cache_resolved_from_the_teacher_config_says_how_to_build_it(world, tmp_path):
    import yaml
    root, data, _ = world
    teacher = yaml.safe_load((ROOT / "configs/synthetic/teacher.yaml").read_text())
    teacher["data"]["root"] = str(root)
    teacher["out_dir"] = str(tmp_path / "no-teachers-yet")
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    config = write_config(tmp_path, root, terms=("feature",))
    cfg = load_config(config, StudentConfig, [f"teacher_config={tmp_path / 'teacher.yaml'}"])
    with pytest.raises(CacheContractError, match="make teacher-cache CONFIG=.*teacher.yaml"):
        open_checked_cache(cfg, data.train)


def test_synthetic_lut_students_fit_the_synthetic_teacher():
    from pipeline.config.teacher import TeacherConfig
    teacher = load_config(ROOT / "configs/synthetic/teacher.yaml", TeacherConfig)
    for path in ROOT.glob("configs/synthetic/student-*.yaml"):
        cfg = load_config(path, StudentConfig)
        assert cfg.model.embedding_dim == teacher.reid.embedding_dim, path.name
        assert cfg.data.dataset == teacher.data.dataset and cfg.data.root == teacher.data.root
