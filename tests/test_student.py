"""The end-to-end student: transform, losses, empty/unlabeled targets, inference, OIM,
checkpoints."""
import math

import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from pipeline.data.records import UNLABELED
from pipeline.models.checkpoint import save_checkpoint
from pipeline.runtime.loading import load_searcher
from pipeline.models.backbone import build_resnet_c4
from pipeline.models.pretrained import PretrainedWeightsMissing
from pipeline.models.oim import IGNORE, OIMLoss
from pipeline.models.roi_heads import assign_targets_to_proposals, balanced_sample
from pipeline.distill.student import build_student
from pipeline.models.transform import PersonSearchTransform
from torchvision.models.detection import _utils as det_utils

from student_helpers import PIDS, images, target, targets, tiny_model_cfg

DET_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_oim"}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_student(tiny_model_cfg(), None, PIDS)


def test_transform_resizes_every_boxes_key_exactly():
    t = PersonSearchTransform(min_size=50, max_size=1000, image_mean=[0.0] * 3,
                              image_std=[1.0] * 3).eval()
    image = torch.rand(3, 100, 200)          # scale 0.5 -> 50 x 100
    tgt = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
           "proposal_boxes": torch.tensor([[0.0, 0.0, 200.0, 100.0], [4.0, 6.0, 8.0, 10.0]]),
           "jitter_boxes": torch.zeros(0, 4), "gt_features": torch.ones(1, 3),
           "pids": torch.tensor([5])}
    out, (res,) = t([image], [tgt])
    assert out.image_sizes == [(50, 100)]
    assert torch.equal(res["boxes"], torch.tensor([[5.0, 10.0, 15.0, 20.0]]))
    assert torch.equal(res["proposal_boxes"], torch.tensor([[0.0, 0.0, 100.0, 50.0],
                                                            [2.0, 3.0, 4.0, 5.0]]))
    assert res["jitter_boxes"].shape == (0, 4)
    assert torch.equal(res["gt_features"], tgt["gt_features"])  # not a box key
    assert torch.equal(tgt["boxes"], torch.tensor([[10.0, 20.0, 30.0, 40.0]]))  # input untouched


def test_forward_backward_returns_named_finite_losses(net):
    net.train()
    losses = net(images(), targets())
    assert set(losses) == DET_KEYS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in net.roi_heads.reid_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.zero_grad()


def test_empty_targets_give_zero_box_loss_and_finite_oim(net):
    net.train()
    empty = target(pids=())
    assert empty["boxes"].shape == (0, 4)
    losses = net(images(1), [empty])
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_box_reg"].item() == 0.0
    assert math.isfinite(losses["loss_oim"].item()) and losses["loss_oim"].item() == 0.0
    sum(losses.values()).backward()
    net.zero_grad()


def test_only_unlabeled_people_give_finite_oim_and_fill_the_queue(net):
    net.train()
    net.roi_heads.oim.queue.zero_()
    losses = net(images(1), [target(pids=(UNLABELED, UNLABELED))])
    assert losses["loss_oim"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    assert net.roi_heads.oim.queue.abs().sum(dim=1).gt(0).any()


def test_labels_with_and_without_gt():
    matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
    props = [torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]),
             torch.tensor([[0.0, 0, 5, 5]])]
    gt = [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)]
    idx, labels = assign_targets_to_proposals(props, gt, matcher)
    assert labels[0].tolist() == [1, 0, 1] and labels[1].tolist() == [0]
    assert idx[1].tolist() == [0]


def test_balanced_sample_matches_torchvision_and_honours_quotas():
    labels = torch.tensor([1, 0, 0, 1, -1, 0, 1, 0, 0, 1, 0, 0])
    for size, frac in ((4, 0.5), (6, 0.25), (32, 0.5)):
        torch.manual_seed(3)
        pos, neg = det_utils.BalancedPositiveNegativeSampler(size, frac)([labels])
        want = torch.where(pos[0] | neg[0])[0]
        torch.manual_seed(3)
        assert torch.equal(balanced_sample(labels, size, int(size * frac)), want)
    got = balanced_sample(labels, 5, 1)      # quotas given: 1 positive, 4 background
    assert (labels[got] == 1).sum() == 1 and (labels[got] == 0).sum() == 4
    assert balanced_sample(labels, 0, 0).numel() == 0
    assert (labels[balanced_sample(labels, 100, 100)] >= 0).all()   # never an ignored row


def test_detect_and_embed_boxes(net):
    net.eval()
    ims = [torch.rand(3, 90, 120), torch.rand(3, 100, 70)]
    with torch.no_grad():
        dets = net.detect(ims)
        assert len(dets) == 2
        for d, im in zip(dets, ims):
            n = d["boxes"].shape[0]
            assert n > 0 and d["scores"].shape == (n,) and d["embeddings"].shape == (n, 32)
            assert torch.allclose(d["embeddings"].norm(dim=1), torch.ones(n), atol=1e-5)
            assert (d["boxes"][:, 2] <= im.shape[2] + 1e-3).all()
            assert (d["boxes"][:, 3] <= im.shape[1] + 1e-3).all()
        # query mode on the detected boxes gives the gallery embeddings back
        emb = net.embed_boxes(ims, [d["boxes"] for d in dets])
        for e, d in zip(emb, dets):
            assert torch.allclose(e, d["embeddings"], atol=1e-4)
        emb = net.embed_boxes(ims, [torch.tensor([[5.0, 5.0, 40.0, 80.0]]), torch.zeros(0, 4)])
        assert emb[0].shape == (1, 32) and emb[1].shape == (0, 32)
        net.roi_heads.score_thresh = 1.0          # nothing passes: empty, well-shaped outputs
        try:
            empty = net.detect(ims)
        finally:
            net.roi_heads.score_thresh = 0.0
        assert empty[0]["boxes"].shape == (0, 4) and empty[0]["embeddings"].shape == (0, 32)
    with pytest.raises(RuntimeError, match="eval"):
        net.train().detect(ims)
    with pytest.raises(RuntimeError, match="train"):
        net.eval()(ims, targets())


def test_contiguous_pid_mapping():
    oim = OIMLoss(np.array([933, 2, 50, 2]), 4, queue_size=0)
    assert oim.num_identities == 3
    got = oim.pid_to_label(torch.tensor([50, UNLABELED, 2, 933]))
    assert got.tolist() == [1, IGNORE, 0, 2]
    with pytest.raises(ValueError, match="not in the OIM table"):
        oim.pid_to_label(torch.tensor([7]))


def test_oim_momentum_update_queue_and_fixed_lut():
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=1)
    init = torch.tensor([[0.0, 0, 1], [0, 0, 1]])
    oim = OIMLoss([10, 20], 3, momentum=0.5, queue_size=2, lut_init=init).train()
    loss = oim(x, torch.tensor([0, IGNORE, IGNORE]))
    assert torch.isfinite(loss)
    expected = torch.nn.functional.normalize(torch.tensor([0.5, 0, 0.5]), dim=0)
    assert torch.allclose(oim.lut[0], expected) and torch.equal(oim.lut[1], init[1])
    assert torch.equal(oim.queue, x[1:]) and int(oim.queue_ptr) == 0
    oim(x[:1], torch.tensor([IGNORE]))                       # wraps around
    assert torch.equal(oim.queue[0], x[0]) and int(oim.queue_ptr) == 1
    fixed = OIMLoss([10, 20], 3, momentum=1.0, queue_size=0, lut_init=init).train()
    loss = fixed(x.requires_grad_(), torch.tensor([0, 1, IGNORE]))
    loss.backward()
    assert torch.equal(fixed.lut, init) and x.grad is not None
    # cross-entropy over [LUT; queue] * scalar
    oim2 = OIMLoss([10, 20], 3, scalar=2.0, queue_size=0, lut_init=init).eval()
    want = torch.nn.functional.cross_entropy(2.0 * x[:1].detach() @ init.t(), torch.tensor([1]))
    assert torch.allclose(oim2(x[:1].detach(), torch.tensor([1])), want)


def test_checkpoint_roundtrip_through_load_searcher(tmp_path, net):
    path = save_checkpoint(tmp_path / "s.pt", net)
    rebuilt = load_searcher(path, "student", "cpu")
    net.eval()
    ims = images(1)
    with torch.no_grad():
        a = net.embed_boxes(ims, [torch.tensor([[5.0, 5.0, 40.0, 80.0]])])[0]
        b = rebuilt.embed_boxes(ims, [torch.tensor([[5.0, 5.0, 40.0, 80.0]])])[0]
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(rebuilt.roi_heads.oim.lut, net.roi_heads.oim.lut)


def test_backbone_options():
    backbone, head = build_resnet_c4("resnet18", norm="frozen", frozen_stages=1)
    assert isinstance(backbone.bn1, FrozenBatchNorm2d)
    assert backbone.out_channels == 256 and head.out_channels == 512
    assert not backbone.conv1.weight.requires_grad and backbone.layer1[0].conv1.weight.requires_grad
    with pytest.raises(PretrainedWeightsMissing, match="not found"):
        build_resnet_c4("resnet18", weights_path="/nonexistent/resnet18.pth")


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_resnet_c4("vgg16")
