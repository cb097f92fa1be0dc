"""Distillation: the pure loss functions, the matching, and each term wired into the student
(off -> absent; on -> a few optimizer steps on that term reduce it)."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from pipeline.distill import losses as L
from pipeline.distill.matching import match_to_gt, paired_iou, teacher_better_mask
from pipeline.distill.distiller import MissingTargetError
from pipeline.distill.student import build_student

from student_helpers import (EMB_DIM, PIDS, TEACHER_DIM, distill_cfg, images, target, targets,
                             teacher_table, tiny_model_cfg)


# ------------------------------------------------------------------ pure functions

def test_feature_loss_kinds_and_empty():
    a = F.normalize(torch.randn(5, 8), dim=1)
    for kind in L.FEATURE_KINDS:
        assert L.feature_distill_loss(a, a.clone(), kind).abs() < 1e-6
        assert L.feature_distill_loss(a, -a, kind) > 1.9
        assert L.feature_distill_loss(a[:0], a[:0], kind).item() == 0.0
    with pytest.raises(ValueError, match="project"):
        L.feature_distill_loss(a, torch.randn(5, 4))


def test_relation_loss_zero_for_same_relations_any_sizes():
    table_s, x = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    q = torch.linalg.qr(torch.randn(12, 12))[0][:, :8]  # isometry 8 -> 12 keeps cosines
    assert L.relation_distill_loss(x, table_s, x @ q.t(), table_s @ q.t(), 0.1).abs() < 1e-5
    assert L.relation_distill_loss(x, table_s, -x @ q.t(), table_s @ q.t(), 0.1) > 0.1
    assert L.relation_distill_loss(x[:0], table_s, x[:0], table_s, 0.1).item() == 0.0


def test_soft_logits_and_bounded_regression():
    s = torch.randn(4, 2)
    assert L.soft_logits_loss(s, s.clone(), 2.0, "bce") < L.soft_logits_loss(s, -s, 2.0, "bce")
    assert L.soft_logits_loss(s, s.clone(), 2.0, "kl").abs() < 1e-6
    assert L.soft_logits_loss(s, -s, 2.0, "kl") > 0
    d, t = torch.zeros(3, 4), torch.tensor([[0.0, 0, 0, 0], [10, 0, 0, 0], [0.1, 0, 0, 0]])
    mask = torch.tensor([True, True, False])
    got = L.bounded_regression_loss(d, t, mask, beta=1 / 9, clip=1.0)
    assert torch.isclose(got, torch.tensor(1.0 / 3))   # row 1 clipped at 1, row 2 masked out
    assert L.bounded_regression_loss(d, t, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_matching_and_teacher_better_mask():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    props = torch.tensor([[0.0, 0, 10, 12], [21, 21, 30, 30], [50, 50, 60, 60]])
    idx, iou = match_to_gt(props, gt)
    assert idx[:2].tolist() == [0, 1] and iou[2] == 0
    assert torch.allclose(paired_iou(gt, gt), torch.ones(2))
    student = props.clone()
    teacher = torch.tensor([[0.0, 0, 10, 10], [25, 25, 30, 30], [50, 50, 60, 60]])
    assert teacher_better_mask(props, student, teacher, gt).tolist() == [True, False, False]
    assert not teacher_better_mask(props, student, teacher, gt[:0]).any()


# ------------------------------------------------------------------ wired into the student

def _net(*terms, seed=0, **kw):
    torch.manual_seed(seed)
    return build_student(tiny_model_cfg(**kw.pop("model", {})), distill_cfg(*terms, **kw), PIDS,
                         teacher_table(EMB_DIM if "lut" in terms else TEACHER_DIM))


def test_terms_off_contribute_nothing_and_on_add_their_keys():
    net = _net().train()
    assert set(net(images(), targets())) == {"loss_objectness", "loss_rpn_box_reg",
                                             "loss_classifier", "loss_box_reg", "loss_oim"}
    net = _net("feature", "relation", "detector", "jitter").train()
    keys = set(net(images(), targets()))
    assert {"loss_distill_feature", "loss_distill_relation", "loss_distill_det_cls",
            "loss_distill_det_reg", "loss_distill_jitter"} <= keys
    net = _net("detector", detector={"reg_weight": 0.0}).train()
    keys = set(net(images(), targets()))
    assert "loss_distill_det_cls" in keys and "loss_distill_det_reg" not in keys


def test_missing_cached_key_is_a_clear_error():
    net = _net("jitter").train()
    tg = targets()
    del tg[1]["jitter_features"]
    with pytest.raises(MissingTargetError, match="jitter_features"):
        net(images(), tg)
    with pytest.raises(ValueError, match="identity table"):
        build_student(tiny_model_cfg(), distill_cfg("relation"), PIDS, None)


def test_lut_from_teacher_fixed_or_blended():
    pids, feats, _ = teacher_table(EMB_DIM)
    order = [list(pids).index(p) for p in sorted(PIDS)]
    fixed = _net("lut").train()
    assert torch.allclose(fixed.roi_heads.oim.lut, torch.from_numpy(feats[order]))
    fixed(images(), targets())
    assert torch.allclose(fixed.roi_heads.oim.lut, torch.from_numpy(feats[order]))
    blended = _net("lut", lut={"momentum": 0.5}).train()
    blended(images(), targets())
    assert not torch.allclose(blended.roi_heads.oim.lut, torch.from_numpy(feats[order]))
    with pytest.raises(ValueError, match="embedding_dim"):
        build_student(tiny_model_cfg(), distill_cfg("lut"), PIDS, teacher_table(TEACHER_DIM))


def test_lut_weight_sets_the_oim_weight_only_while_the_table_is_the_teachers():
    def oim_loss(*terms, **kw):
        net = _net(*terms, **kw).train()
        torch.manual_seed(3)  # the same RoI sampling for every net
        return net(images(), targets(dim=EMB_DIM))["loss_oim"]
    full = oim_loss("lut")
    light = oim_loss("lut", lut={"weight": 0.1})
    assert full.item() > 0 and torch.isclose(light, 0.1 * full, rtol=1e-5)
    assert torch.isclose(oim_loss("lut", lut={"weight": None}), full)
    # without the lut term the OIM table is the student's own: model.oim_weight applies
    alone = oim_loss(model={"embedding_dim": EMB_DIM})
    assert torch.isclose(oim_loss(lut={"weight": 0.1}, model={"embedding_dim": EMB_DIM}), alone)
    net = _net("lut", lut={"weight": 0.1})
    assert net.roi_heads.oim_weight == pytest.approx(0.1)
    assert net.model_args["model"]["oim_weight"] == 1.0   # the network's own config is kept


def _term_after_steps(net, key, steps=5, lr=2e-3, dim=TEACHER_DIM, tg=None):
    """Value of loss ``key`` before and after ``steps`` SGD steps on that loss alone (same
    sampling each step: the RNG is reseeded)."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    ims, tg = images(), tg or targets(dim=dim)
    values = []
    for _ in range(steps + 1):
        torch.manual_seed(1)
        loss = net(ims, tg)[key]
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return values[0], values[-1]


@pytest.mark.parametrize("term,key,extra", [
    ("feature", "loss_distill_feature", {}),
    ("feature", "loss_distill_feature",
     {"feature": {"kind": "l2"}, "model": {"embedding_dim": 16}}),  # same size: no projection
    ("relation", "loss_distill_relation", {}),
    ("jitter", "loss_distill_jitter", {}),
    ("jitter", "loss_distill_jitter", {"roi_share": None}),   # cached boxes on top of the batch
    ("detector", "loss_distill_det_cls", {"detector": {"cls_loss": "bce"}}),
    ("detector", "loss_distill_det_cls", {}),
])
def test_each_term_moves_the_student_toward_its_target(term, key, extra):
    terms = (term, "lut") if term == "relation" else (term,)  # relation needs a filled table
    net = _net(*terms, **extra).train()
    before, after = _term_after_steps(net, key, dim=EMB_DIM if "lut" in terms else TEACHER_DIM)
    assert after < 0.9 * before, (before, after)


def test_detector_regression_term_moves_toward_teacher_boxes():
    net = _net("detector", detector={"weight": 0.0}).train()
    # teacher boxes exactly on the GT: the teacher is better wherever the student is not perfect
    tg = targets()
    for t in tg:
        idx, iou = match_to_gt(t["proposal_boxes"], t["boxes"])
        t["proposal_boxes"] = t["boxes"][idx] + torch.tensor([3.0, -2.0, 2.0, 3.0])
        t["proposal_refined_boxes"] = t["boxes"][idx].clone()
    before, after = _term_after_steps(net, "loss_distill_det_reg", tg=tg, lr=1e-4)
    assert before > 0 and after < 0.9 * before, (before, after)


def test_all_terms_on_images_without_any_boxes():
    net = _net("feature", "relation", "detector", "jitter", "lut").train()
    bare = target(pids=(), n_props=0, n_jitter=0, dim=EMB_DIM)
    losses = net(images(1), [bare])
    assert all(torch.isfinite(v) for v in losses.values())
    for key in ("loss_distill_feature", "loss_distill_relation", "loss_distill_jitter",
                "loss_distill_det_cls", "loss_distill_det_reg", "loss_box_reg", "loss_oim"):
        assert losses[key].item() == 0.0, key
    sum(losses.values()).backward()


# ------------------------------------------------------------------ the RoI budget

def _rois(net, tg, seed=0):
    """The RoI batch of one training step (proposals from the net's own RPN) and the cached
    boxes the distiller chose for it."""
    torch.manual_seed(seed)
    images_t, tg = net.transform(images(len(tg)), tg)
    features = net._features(images_t.tensors)
    proposals, _ = net.rpn(images_t, features, tg)
    torch.manual_seed(seed)
    choice = net.distiller.extra_boxes(tg) if net.distiller is not None else None
    extra = choice.extra if choice is not None else None
    return net.roi_heads.select_training_samples(proposals, tg, extra), tg, choice


def _check_groups_point_at_their_cached_boxes(rois, tg, choice):
    boxes = torch.cat(rois.boxes)
    assert rois.groups["gt"].numel() > 0
    for group, key in (("gt", "boxes"), ("proposals", "proposal_boxes"),
                       ("jitter", "jitter_boxes")):
        rows, src = rois.groups[group], choice.source_rows[group]
        assert torch.equal(boxes[rows], torch.cat([t[key] for t in tg])[src]), group


@pytest.mark.parametrize("share", [0.5, 0.25])
def test_cached_boxes_take_their_share_of_the_roi_batch(share):
    terms = ("feature", "detector", "jitter")
    net = _net(*terms, roi_share=share).train()          # tiny model: 16 RoIs per image
    rois, tg, choice = _rois(net, targets(n_props=24, n_jitter=12))
    budget = int(share * 16)
    assert [b.shape[0] for b in rois.boxes] == [16, 16]
    for i, t in enumerate(tg):
        in_image = {g: int((rois.image_ids[rows] == i).sum()) for g, rows in rois.groups.items()}
        assert sum(in_image.values()) == budget
        assert in_image["gt"] == t["boxes"].shape[0]     # GT boxes come first
        assert in_image["proposals"] + in_image["jitter"] == budget - in_image["gt"]
    _check_groups_point_at_their_cached_boxes(rois, tg, choice)
    pos = (rois.labels > 0).view(2, 16).sum(dim=1)
    assert (pos <= 8).all()                               # positive fraction 0.5 kept


def test_without_a_share_cached_boxes_come_on_top_of_a_full_batch():
    net = _net("feature", "detector", "jitter", roi_share=None,
               detector={"num_proposals": 10}).train()
    rois, tg, choice = _rois(net, targets(n_props=24, n_jitter=12))
    cached = [t["boxes"].shape[0] + 10 + t["jitter_boxes"].shape[0] for t in tg]
    assert [b.shape[0] for b in rois.boxes] == [16 + c for c in cached]
    _check_groups_point_at_their_cached_boxes(rois, tg, choice)


def test_no_distillation_samples_exactly_as_torchvision():
    """Without terms the batch is torchvision's: proposals + GT, balanced sampler, same draws."""
    from torchvision.models.detection import _utils as det_utils
    net = _net().train()
    torch.manual_seed(0)
    images_t, tg = net.transform(images(), targets())
    features = net._features(images_t.tensors)
    proposals, _ = net.rpn(images_t, features, tg)
    torch.manual_seed(5)
    rois = net.roi_heads.select_training_samples(proposals, tg)
    torch.manual_seed(5)
    pool = [torch.cat((p, t["boxes"])) for p, t in zip(proposals, tg)]
    matcher = net.roi_heads.proposal_matcher
    labels = []
    for p, t in zip(pool, tg):
        m = matcher(box_iou(t["boxes"], p))
        labels.append(torch.where(m >= 0, 1, torch.where(m == -1, 0, -1)))
    pos, neg = det_utils.BalancedPositiveNegativeSampler(16, 0.5)(labels)
    for got, p, ps, ng, lab in zip(rois.boxes, pool, pos, neg, labels):
        keep = torch.where(ps | ng)[0]
        assert torch.equal(got, p[keep])
    assert torch.equal(rois.labels, torch.cat([lab[torch.where(ps | ng)[0]]
                                               for lab, ps, ng in zip(labels, pos, neg)]))
    assert rois.groups == {} and net.distiller is None


def test_roi_share_is_checked():
    with pytest.raises(ValueError, match="roi_share"):
        distill_cfg("jitter", roi_share=1.5)


# ------------------------------------------------------------------ the loss balance

def _weights(net) -> dict[str, float]:
    return {k.removeprefix("weight_"): v.item() for k, v in net.distiller.balance.weights().items()}


def test_uncertainty_balance_weighs_a_large_loss_down_and_a_small_one_up():
    # a feature term configured 10x too heavy: the largest loss
    net = _net("feature", balance="uncertainty", feature={"weight": 10.0}).train()
    assert set(_weights(net)) >= {"loss_oim", "loss_distill_feature", "loss_objectness"}
    assert all(w == 1.0 for w in _weights(net).values())    # it starts at the configured weights
    # the log-variances are the student's parameters (the optimizer trains them); here they
    # alone are stepped, so the losses stay what they were
    log_vars = net.distiller.balance.log_vars
    assert all(any(p is s for p in net.parameters()) for s in log_vars.values())
    opt = torch.optim.SGD(log_vars.parameters(), lr=0.1)
    ims, tg = images(), targets()
    for _ in range(5):
        torch.manual_seed(1)
        weighted = net(ims, tg)
        raw = {k: v.item() / _weights(net)[k] for k, v in weighted.items() if k != "loss_balance"}
        opt.zero_grad()
        sum(weighted.values()).backward()
        opt.step()
    large, small = max(raw, key=raw.get), min(raw, key=raw.get)
    assert large == "loss_distill_feature" and raw[large] > 1.0 > raw[small], raw
    w = _weights(net)
    assert w[large] < 1.0 < w[small], (w, raw)


def test_fixed_balance_leaves_the_losses_as_configured():
    net = _net("feature").train()
    assert net.distiller.balance.weights() == {}
    assert "loss_balance" not in net(images(), targets())


def test_unknown_balance_is_a_one_line_error():
    from click.testing import CliRunner
    from cli import cli
    result = CliRunner().invoke(cli, ["train-student", "--config",
                                      "configs/synthetic/student-r18-distilled.yaml",
                                      "--set", "distill.balance=adaptive"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert "distill.balance" in result.output and "uncertainty" in result.output
