"""RoI heads of the person-search network: box classifier/regressor, Re-ID embedding with OIM,
and the distillation terms that act on RoI features.

All boxes are (N,4) x1,y1,x2,y2 in pixels of the *resized* image (the transform's frame).
Every group of boxes (sampled proposals, teacher proposals, GT boxes, jittered boxes) is RoI-
pooled from ``feat_res4`` and runs through the res5 trunk in ONE batch, then split again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, boxes as box_ops

from pipeline.data.records import UNLABELED
from pipeline.distill.matching import teacher_better_mask
from pipeline.distill.terms import DetectorDistill, FeatureDistill, RelationDistill
from pipeline.models.oim import OIMLoss
from pipeline.models.reid_head import ReIDHead

#: target keys each distillation term reads (CONTRACTS.md section 2 names)
REQUIRED_KEYS = {
    "feature": ("gt_features",),
    "relation": ("gt_features",),
    "detector": ("proposal_boxes", "proposal_logits", "proposal_refined_boxes"),
    "jitter": ("jitter_boxes", "jitter_features"),
}


class MissingTargetError(KeyError):
    """A distillation term is on but the targets lack the cached key it needs."""

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------ sampling, in small steps

def add_gt_proposals(proposals: list[Tensor], gt_boxes: list[Tensor]) -> list[Tensor]:
    """Append each image's GT boxes to its proposals (so every GT has a positive sample)."""
    return [torch.cat((p, g.to(p.dtype))) for p, g in zip(proposals, gt_boxes)]


def assign_targets_to_proposals(proposals: list[Tensor], gt_boxes: list[Tensor],
                                matcher: det_utils.Matcher) -> tuple[list[Tensor], list[Tensor]]:
    """Per image: (matched GT index per proposal, label 1 person / 0 background / -1 ignored).

    Without GT every proposal is background and points at GT index 0 (never read)."""
    matched_idxs, labels = [], []
    for p, g in zip(proposals, gt_boxes):
        if g.numel() == 0:
            idx = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
            lab = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
        else:
            m = matcher(box_ops.box_iou(g, p))
            idx = m.clamp(min=0)
            lab = torch.ones_like(m)
            lab[m == matcher.BELOW_LOW_THRESHOLD] = 0
            lab[m == matcher.BETWEEN_THRESHOLDS] = -1
        matched_idxs.append(idx)
        labels.append(lab)
    return matched_idxs, labels


def subsample(labels: list[Tensor], sampler: det_utils.BalancedPositiveNegativeSampler
              ) -> list[Tensor]:
    """Per image: indices of the sampled proposals (a balanced foreground/background subset)."""
    pos, neg = sampler(labels)
    return [torch.where(p | n)[0] for p, n in zip(pos, neg)]


def matched_pids(matched_idxs: list[Tensor], labels: list[Tensor],
                 gt_pids: list[Tensor]) -> list[Tensor]:
    """Identity of each sampled proposal's GT; UNLABELED for background."""
    out = []
    for idx, lab, pids in zip(matched_idxs, labels, gt_pids):
        if pids.numel() == 0:
            out.append(torch.full_like(lab, UNLABELED))
        else:
            p = pids.to(torch.int64)[idx]
            out.append(torch.where(lab > 0, p, torch.full_like(p, UNLABELED)))
    return out


class PersonSearchRoIHeads(nn.Module):
    """Box head (2 classes) + Re-ID head with OIM, plus optional distillation terms.

    Training: ``forward(features, proposals, image_shapes, targets) -> dict of weighted losses``.
    Inference: ``detect(...)`` for boxes and scores, ``embed(...)`` for embeddings of given boxes.
    """

    def __init__(self, box_roi_pool: MultiScaleRoIAlign, box_head: nn.Module,
                 box_predictor: nn.Module, reid_head: ReIDHead, oim: OIMLoss, *,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5,
                 batch_size_per_image: int = 128, positive_fraction: float = 0.5,
                 bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.4,
                 detections_per_img: int = 100, oim_weight: float = 1.0,
                 feature_distill: FeatureDistill | None = None,
                 relation_distill: RelationDistill | None = None,
                 detector_distill: DetectorDistill | None = None,
                 jitter_distill: FeatureDistill | None = None):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.reid_head = reid_head
        self.oim = oim
        self.proposal_matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh,
                                                  allow_low_quality_matches=False)
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image,
                                                                       positive_fraction)
        self.box_coder = det_utils.BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        self.oim_weight = oim_weight
        self.feature_distill = feature_distill
        self.relation_distill = relation_distill
        self.detector_distill = detector_distill
        self.jitter_distill = jitter_distill

    # -------------------------------------------------------------- shared pieces
    def box_features(self, features: dict[str, Tensor], groups: dict[str, list[Tensor]],
                     image_shapes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """RoI-pool every group of per-image boxes, run res5 once on all, split by group."""
        # boxes stay float32 (a bf16 box is off by pixels); roi_align autocasts to float32
        pooled = [self.box_roi_pool(features, [b.float() for b in boxes], image_shapes)
                  for boxes in groups.values()]
        sizes = [p.shape[0] for p in pooled]
        if sum(sizes) == 0:
            width = self.box_predictor.cls_score.in_features
            empty = features["feat_res4"].new_zeros((0, width))
            return {name: empty for name in groups}
        x = self.box_head(torch.cat(pooled))
        return dict(zip(groups, x.split(sizes)))

    def required_keys(self) -> set[str]:
        keys = set()
        for name in REQUIRED_KEYS:
            if getattr(self, f"{name}_distill") is not None:
                keys.update(REQUIRED_KEYS[name])
        return keys

    def check_targets(self, targets: list[dict[str, Tensor]]) -> None:
        for key in sorted(self.required_keys()):
            for i, t in enumerate(targets):
                if key not in t:
                    on = [n for n, ks in REQUIRED_KEYS.items()
                          if key in ks and getattr(self, f"{n}_distill") is not None]
                    raise MissingTargetError(
                        f"distillation term(s) {on} need target key {key!r} (from the teacher "
                        f"cache), missing in target {i}; keys present: {sorted(t)}")
        if self.feature_distill is not None or self.relation_distill is not None:
            for i, t in enumerate(targets):
                if t["gt_features"].shape[0] != t["boxes"].shape[0]:
                    raise ValueError(f"target {i}: {t['gt_features'].shape[0]} gt_features rows "
                                     f"for {t['boxes'].shape[0]} boxes")

    # -------------------------------------------------------------- training
    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """-> sampled proposals, labels, identities, regression targets (lists per image)."""
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        gt_pids = [t["pids"] for t in targets]
        proposals = add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = assign_targets_to_proposals(proposals, gt_boxes,
                                                           self.proposal_matcher)
        keep = subsample(labels, self.fg_bg_sampler)
        proposals = [p[k] for p, k in zip(proposals, keep)]
        matched_idxs = [m[k] for m, k in zip(matched_idxs, keep)]
        labels = [lab[k] for lab, k in zip(labels, keep)]
        pids = matched_pids(matched_idxs, labels, gt_pids)
        matched_gt = [g[m] if g.numel() else torch.zeros_like(p)
                      for g, m, p in zip(gt_boxes, matched_idxs, proposals)]
        regression_targets = self.box_coder.encode(matched_gt, proposals)
        return proposals, labels, pids, regression_targets

    def _teacher_proposals(self, targets):
        """Cached teacher proposals (optionally a random subset per image), their logits and
        refined boxes; degenerate boxes dropped."""
        n = self.detector_distill.num_proposals
        props, logits, refined = [], [], []
        for t in targets:
            p, lg, r = t["proposal_boxes"], t["proposal_logits"], t["proposal_refined_boxes"]
            ok = ((p[:, 2:] - p[:, :2]) >= 1).all(dim=1) & ((r[:, 2:] - r[:, :2]) > 0).all(dim=1)
            idx = torch.where(ok)[0]
            if 0 < n < idx.numel():
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:n]]
            props.append(p[idx].float())
            logits.append(lg[idx].float())
            refined.append(r[idx].float())
        return props, logits, refined

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        self.check_targets(targets)
        proposals, labels, pids, regression_targets = self.select_training_samples(proposals,
                                                                                   targets)
        groups = {"sampled": proposals}
        if self.feature_distill is not None or self.relation_distill is not None:
            groups["gt"] = [t["boxes"] for t in targets]
        if self.detector_distill is not None:
            t_props, t_logits, t_refined = self._teacher_proposals(targets)
            groups["teacher"] = t_props
        if self.jitter_distill is not None:
            groups["jitter"] = [t["jitter_boxes"] for t in targets]
        feats = self.box_features(features, groups, image_shapes)

        class_logits, box_regression = self.box_predictor(feats["sampled"])
        class_logits, box_regression = class_logits.float(), box_regression.float()
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels,
                                                      regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        fg = torch.cat(labels) > 0
        reid_groups = {"fg": feats["sampled"][fg]}
        for name in ("gt", "jitter"):
            if name in feats:
                reid_groups[name] = feats[name]
        emb = self.reid_head(torch.cat(list(reid_groups.values())))
        emb = dict(zip(reid_groups, emb.split([v.shape[0] for v in reid_groups.values()])))

        losses.update(self._embedding_distill(emb, targets))  # before OIM updates its table
        if self.detector_distill is not None:
            losses.update(self._detector_distill(feats["teacher"], t_props, t_logits, t_refined,
                                                 [t["boxes"] for t in targets]))

        fg_labels = self.oim.pid_to_label(torch.cat(pids)[fg])
        losses["loss_oim"] = self.oim_weight * self.oim(emb["fg"], fg_labels)
        return losses

    def _embedding_distill(self, emb: dict[str, Tensor], targets) -> dict[str, Tensor]:
        """Feature, relation and jitter terms on the GT / jittered boxes' embeddings."""
        out = {}
        if self.feature_distill is not None or self.relation_distill is not None:
            teacher = torch.cat([t["gt_features"] for t in targets])
            if self.feature_distill is not None:
                out["loss_distill_feature"] = self.feature_distill(emb["gt"], teacher)
            if self.relation_distill is not None:  # a copy: OIM updates the LUT in place
                out["loss_distill_relation"] = self.relation_distill(
                    emb["gt"], self.oim.lut.clone(), teacher)
        if self.jitter_distill is not None:
            teacher = torch.cat([t["jitter_features"] for t in targets])
            out["loss_distill_jitter"] = self.jitter_distill(emb["jitter"], teacher)
        return out

    def _detector_distill(self, feats: Tensor, props: list[Tensor], t_logits: list[Tensor],
                          t_refined: list[Tensor], gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        logits, regression = self.box_predictor(feats)
        logits, regression = logits.float(), regression.float()  # losses and boxes in float32
        deltas = regression.reshape(-1, regression.shape[1] // 4, 4)[:, 1]  # the person class
        props_cat = torch.cat(props)
        refined_cat = torch.cat(t_refined)
        teacher_deltas = self.box_coder.encode_single(refined_cat, props_cat)
        with torch.no_grad():
            student_boxes = self.box_coder.decode_single(deltas.detach(), props_cat)
        sizes = [p.shape[0] for p in props]
        mask = torch.cat([
            teacher_better_mask(p, s, r, g.to(p.dtype), self.detector_distill.fg_iou_thresh)
            for p, s, r, g in zip(props, student_boxes.split(sizes), t_refined, gt_boxes)])
        mask &= torch.isfinite(teacher_deltas).all(dim=1)
        return self.detector_distill(logits, torch.cat(t_logits), deltas, teacher_deltas, mask)

    # -------------------------------------------------------------- inference
    def detect(self, features: dict[str, Tensor], proposals: list[Tensor],
               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: person boxes (resized frame) and scores after threshold, NMS and top-k."""
        feats = self.box_features(features, {"p": proposals}, image_shapes)["p"]
        class_logits, box_regression = self.box_predictor(feats)
        class_logits, box_regression = class_logits.float(), box_regression.float()
        sizes = [p.shape[0] for p in proposals]
        deltas = box_regression.reshape(-1, box_regression.shape[1] // 4, 4)[:, 1]
        boxes = self.box_coder.decode_single(deltas, torch.cat(proposals)) if sum(sizes) else \
            deltas.new_zeros((0, 4))
        scores = F.softmax(class_logits, -1)[:, 1]
        out_boxes, out_scores = [], []
        for b, s, shape in zip(boxes.split(sizes), scores.split(sizes), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            keep = torch.where(s > self.score_thresh)[0]
            b, s = b[keep], s[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s = b[keep], s[keep]
            keep = box_ops.nms(b, s, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(b[keep])
            out_scores.append(s[keep])
        return out_boxes, out_scores

    def embed(self, features: dict[str, Tensor], boxes: list[Tensor],
              image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """Per image: (Ni, D) unit-norm embeddings of the given boxes (resized frame)."""
        feats = self.box_features(features, {"b": boxes}, image_shapes)["b"]
        if feats.shape[0] == 0:
            emb = feats.new_zeros((0, self.reid_head.dim))
        else:
            emb = self.reid_head(feats).float()
        return list(emb.split([b.shape[0] for b in boxes]))
