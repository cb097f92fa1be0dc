"""Stage one teachers: training steps, box scoring in original coordinates, crops, the
two-step searcher."""
import csv
import math

import numpy as np
import pytest
import torch

from pipeline.data import read_dataset
from pipeline.data.crops import PKSampler, crop_and_resize
from pipeline.data.images import load_image
from pipeline.models.teacher_detector import TeacherDetector, score_given_boxes
from pipeline.models.teacher_reid import TeacherReid, batch_hard_triplet_loss
from teacher_helpers import trained_tiny_teachers


@pytest.fixture(scope="module")
def teachers(synthetic_prw, tmp_path_factory):
    return trained_tiny_teachers(synthetic_prw, tmp_path_factory.getbasetemp() / "tiny-teachers")


def _losses(run_dir):
    with open(run_dir / "losses.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("part,keys", [("detector", ["loss_classifier", "loss_objectness"]),
                                       ("reid", ["loss_id", "loss_triplet"])])
def test_teachers_train_with_finite_losses(teachers, part, keys):
    from pathlib import Path
    rows = _losses(Path(teachers.out_dir) / part)
    assert len(rows) >= 2
    for row in rows:
        for k in keys:
            assert math.isfinite(float(row[k]))
    assert (Path(teachers.out_dir) / f"{part}.pt").is_file()


def _tiny_detector(**kw):
    torch.manual_seed(0)
    return TeacherDetector(backbone="resnet18", fpn_channels=16, min_size=64, max_size=96,
                           rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, **kw).eval()


def test_score_given_boxes_shapes_and_original_coordinates():
    det = _tiny_detector()
    images = [torch.rand(3, 120, 160), torch.rand(3, 90, 70)]  # both resized by the transform
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 100.0]]),
             torch.tensor([[5.0, 5.0, 40.0, 60.0], [30.0, 20.0, 69.0, 88.0]])]
    logits, refined = score_given_boxes(det, images, boxes)
    assert logits.shape == (3, 2) and refined.shape == (3, 4)
    # zero regression: the refined boxes must be the given boxes, back in original pixels
    det.roi_heads.box_predictor.bbox_pred.weight.data.zero_()
    det.roi_heads.box_predictor.bbox_pred.bias.data.zero_()
    _, refined = score_given_boxes(det, images, boxes)
    torch.testing.assert_close(refined, torch.cat(boxes), atol=1e-3, rtol=0)


def test_score_given_boxes_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="box lists"):
        score_given_boxes(_tiny_detector(), [torch.rand(3, 64, 64)], [])


def test_crop_and_resize_cuts_the_box():
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    image = torch.stack([xs, ys, xs + 10 * ys])
    crops = crop_and_resize(image, torch.tensor([[2.0, 3.0, 6.0, 8.0], [0, 0, 50, 40]]), (5, 4))
    assert crops.shape == (2, 3, 5, 4)
    torch.testing.assert_close(crops[0], image[:, 3:8, 2:6], atol=1e-4, rtol=0)
    assert crop_and_resize(image, torch.zeros((0, 4)), (5, 4)).shape == (0, 3, 5, 4)


def test_reid_embeddings_are_unit_and_triplet_loss_orders():
    reid = TeacherReid(backbone="resnet18", num_classes=5, embedding_dim=16, crop_height=32,
                       crop_width=16).eval()
    emb = reid.embed(torch.rand(4, 3, 32, 16))
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]])
    bad = torch.tensor([[0.0, 0], [5, 5], [0, 0.1], [5, 5.1]])
    assert batch_hard_triplet_loss(good, labels, 0.3) == 0
    assert batch_hard_triplet_loss(bad, labels, 0.3) > 1


def test_pk_sampler_batches():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    batches = list(PKSampler(labels, 2, 2, seed=1))
    assert len(batches) == 2
    for b in batches:
        got = [labels[i] for i in b]
        assert len(b) == 4 and len(set(got)) == 2 and all(got.count(x) == 2 for x in set(got))
    assert batches == list(PKSampler(labels, 2, 2, seed=1))


def test_two_step_searcher(teachers, tmp_path):
    from pipeline.config import save_config
    from pipeline.runtime.loading import load_searcher
    cfg_path = tmp_path / "teacher.yaml"
    save_config(teachers, cfg_path)
    searcher = load_searcher(cfg_path, "teacher")
    data = read_dataset("prw", teachers.data.root)
    images = [load_image(r.path) for r in data.gallery[:2]]
    with torch.no_grad():
        out = searcher.detect(images)
        again = searcher.embed_boxes(images, [o["boxes"] for o in out])
        emb = searcher.embed_boxes(images, [torch.tensor([[10.0, 10, 40, 90]]),
                                            torch.zeros((0, 4))])
    assert len(out) == 2
    for o, a, im in zip(out, again, images):
        n = len(o["boxes"])
        assert n > 0, "the tiny teacher (score threshold 0) must detect something"
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,)
        assert o["embeddings"].shape == (n, 32)
        torch.testing.assert_close(o["embeddings"].norm(dim=1), torch.ones(n))
        torch.testing.assert_close(o["embeddings"], a, atol=1e-5, rtol=0)  # one crop path
        h, w = im.shape[-2:]
        assert (o["boxes"][:, 0::2] <= w + 1e-3).all() and (o["boxes"][:, 1::2] <= h + 1e-3).all()
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])
    assert emb[0].shape == (1, 32) and emb[1].shape == (0, 32)
    np.testing.assert_allclose(emb[0].norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_detector_step_with_empty_targets_and_no_boxes_to_score():
    from pipeline.stages.teachers import detector_step
    det = _tiny_detector().train()
    images = [torch.rand(3, 80, 60), torch.rand(3, 80, 60)]
    empty = {"boxes": torch.zeros((0, 4)), "pids": torch.zeros(0, dtype=torch.int64)}
    losses = detector_step(det, (images, [empty, empty]), torch.device("cpu"))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0
    logits, refined = score_given_boxes(det.eval(), images[:1], [torch.zeros((0, 4))])
    assert logits.shape == (0, 2) and refined.shape == (0, 4)
