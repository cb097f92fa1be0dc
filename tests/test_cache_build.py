"""Stage one cache build: a tiny build is accepted by the reader and verify; flip-view targets
are the teachers on the flipped image; an interrupted build resumes to the same file; a
second build returns at once."""
import dataclasses

import h5py
import numpy as np
import pytest
import torch

from cache import TeacherCache
from cache.verify import verify_cache
from pipeline.data import read_dataset
from pipeline.data.crops import crop_and_resize
from pipeline.data.images import load_image
from pipeline.data.transforms import flip_boxes
from pipeline.models.teacher_detector import score_given_boxes
from pipeline.models.teachers import load_detector, load_reid
from pipeline.stages import teacher_cache
from pipeline.stages.teacher_cache import build_cache, jitter_boxes
from teacher_helpers import trained_tiny_teachers


@pytest.fixture(scope="module")
def teachers(synthetic_prw, tmp_path_factory):
    return trained_tiny_teachers(synthetic_prw, tmp_path_factory.getbasetemp() / "tiny-teachers")


@pytest.fixture(scope="module")
def built(teachers):
    return build_cache(teachers, progress=False)


def _with_cache_dir(cfg, path):
    return dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, dir=str(path)))


def test_build_is_accepted_by_reader_and_verify(teachers, built):
    data = read_dataset("prw", teachers.data.root)
    assert verify_cache(built, data.train, "prw") == []
    c = TeacherCache(built)
    assert c.meta.num_images == len(data.train) and c.meta.has_flip
    t = c.image_targets(0)
    assert t["proposal_boxes"].shape == (teachers.cache.proposals_per_image, 4)
    assert t["jitter_boxes"].shape == (2 * len(t["gt_boxes"]), 4)
    np.testing.assert_array_equal(t["gt_boxes"], data.train[0].boxes)


def test_flip_view_is_the_teacher_on_the_flipped_image(teachers, built):
    data = read_dataset("prw", teachers.data.root)
    reid = load_reid(teachers.checkpoint("reid"))
    c = TeacherCache(built)
    i = next(k for k, r in enumerate(data.train) if len(r.boxes))
    image = load_image(data.train[i].path)
    boxes = torch.from_numpy(data.train[i].boxes)
    size = (teachers.reid.crop_height, teachers.reid.crop_width)
    flipped = c.image_targets(i, flipped=True)
    orig = c.image_targets(i)
    with torch.no_grad():
        want_flip = reid.embed(crop_and_resize(image.flip(-1), flip_boxes(boxes, image.shape[-1]),
                                               size))
        want_orig = reid.embed(crop_and_resize(image, boxes, size))
    np.testing.assert_allclose(flipped["gt_features"], want_flip.numpy(), atol=1e-4)
    np.testing.assert_allclose(orig["gt_features"], want_orig.numpy(), atol=1e-4)
    assert not np.allclose(flipped["gt_features"], orig["gt_features"], atol=1e-3)
    # the flip view's detector outputs are the detector on the flipped image at the mirrored
    # proposals, with refined boxes mirrored back into original coordinates
    w = image.shape[-1]
    detector = load_detector(teachers.checkpoint("detector"))
    props = torch.from_numpy(orig["proposal_boxes"])
    logits, refined = score_given_boxes(detector, [image.flip(-1)], [flip_boxes(props, w)])
    np.testing.assert_allclose(flipped["proposal_logits"], logits.numpy(), atol=1e-3)
    np.testing.assert_allclose(flipped["proposal_refined_boxes"],
                               flip_boxes(refined, w).numpy(), atol=1e-2)
    logits, _ = score_given_boxes(detector, [image], [props])
    np.testing.assert_allclose(orig["proposal_logits"], logits.numpy(), atol=1e-3)
    assert not np.allclose(flipped["proposal_logits"], orig["proposal_logits"], atol=1e-3)


def _arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def test_interrupted_build_resumes_to_the_same_file(teachers, built, tmp_path):
    cfg = _with_cache_dir(teachers, tmp_path)

    class Stop(Exception):
        pass

    def stop_after_four(done):
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        build_cache(cfg, progress=False, after_batch=stop_after_four)
    partial = list(tmp_path.glob("*.partial"))
    assert len(partial) == 1 and not list(tmp_path.glob("*.h5"))
    resumed = build_cache(cfg, progress=False)
    a, b = _arrays(built), _arrays(resumed)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_second_build_returns_at_once(teachers, built, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the teachers must not run again")

    monkeypatch.setattr(teacher_cache, "load_detector", fail)
    assert build_cache(teachers, progress=False) == built


def test_jitter_boxes_keep_min_iou_and_are_seeded():
    from torchvision.ops import box_iou
    gt = np.array([[10, 10, 40, 90], [50, 20, 70, 60]], np.float32)
    a, owner = jitter_boxes(gt, 5, 0.5, np.random.default_rng([0, 3]), 100, 100)
    b, _ = jitter_boxes(gt, 5, 0.5, np.random.default_rng([0, 3]), 100, 100)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (10, 4) and owner.tolist() == [0] * 5 + [1] * 5
    iou = box_iou(torch.from_numpy(a), torch.from_numpy(gt)).numpy()[np.arange(10), owner]
    assert iou.min() >= 0.5 and iou.max() < 1.0


def test_cli_cache_info_verify_and_missing_teachers(teachers, built, tmp_path):
    from click.testing import CliRunner

    from cli import cli
    from pipeline.config import save_config
    runner = CliRunner()
    info = runner.invoke(cli, ["cache", "info", str(built)])
    assert info.exit_code == 0 and "proposals per image" in info.output
    ok = runner.invoke(cli, ["cache", "verify", str(built), "--dataset", "prw",
                             "--root", teachers.data.root])
    assert ok.exit_code == 0, ok.output
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not a cache")
    bad = runner.invoke(cli, ["cache", "verify", str(broken)])
    assert bad.exit_code != 0
    cfg_path = tmp_path / "t.yaml"
    save_config(dataclasses.replace(teachers, out_dir=str(tmp_path / "none")), cfg_path)
    missing = runner.invoke(cli, ["build-cache", "--config", str(cfg_path)])
    assert missing.exit_code != 0 and "detector checkpoint not found" in missing.output
    again = runner.invoke(cli, ["build-cache", "--config", str(tmp_path / "x.yaml")])
    assert again.exit_code != 0
