"""RoI heads of the person-search network: box classifier/regressor, Re-ID embedding with OIM,
and the distillation terms that act on RoI features.

All boxes are (N,4) x1,y1,x2,y2 in pixels of the *resized* image (the transform's frame).
A training step's RoIs are one batch per image: the student's own proposals, sampled as
torchvision does, plus the cached boxes the distillation terms need (GT boxes, teacher
proposals, jittered boxes). Cached boxes are ordinary samples too (labelled against the GT),
and by default take their place in the batch (``roi_share``) rather than adding to it: the
res5 trunk on the RoIs is most of a step's cost, so distillation then costs almost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

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

def assign_targets_to_proposals(proposals: list[Tensor], gt_boxes: list[Tensor],
                                matcher: det_utils.Matcher) -> tuple[list[Tensor], list[Tensor]]:
    """Per image: (matched GT index per proposal, label 1 person / 0 background / -1 ignored).

    Without GT every proposal is background and points at GT index 0 (never read)."""
    matched_idxs, labels = [], []
    for p, g in zip(proposals, gt_boxes):
        if g.numel() == 0 or p.shape[0] == 0:
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


def balanced_sample(labels: Tensor, size: int, max_positives: int) -> Tensor:
    """Sorted indices of a random subset: up to ``max_positives`` rows labelled >= 1, then
    background (0) rows up to ``size`` in all; ignored rows (-1) never. torchvision's
    BalancedPositiveNegativeSampler rule (and random draws) for one image, with the quotas
    given, so cached boxes can take part of the batch."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = max(0, min(positive.numel(), max_positives))
    num_neg = max(0, min(negative.numel(), size - num_pos))
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return torch.cat((pos, neg)).sort().values


def _random_subset(rows: Tensor, limit: int | None) -> Tensor:
    """``rows`` whole when ``limit`` is None or not exceeded, else ``limit`` random ones, in
    their original order."""
    if limit is None or rows.numel() <= limit:
        return rows
    return rows[torch.randperm(rows.numel(), device=rows.device)[:limit].sort().values]


#: per group of cached boxes, the target key holding the boxes
CACHED_BOX_KEYS = {"gt": "boxes", "teacher": "proposal_boxes", "jitter": "jitter_boxes"}


@dataclass
class RoIBatch:
    """One training step's RoIs; row tensors are concatenated over images.

    members: group of cached boxes -> (rows of this batch, rows of the group's cached tensors
    concatenated over images, e.g. ``cat(t["jitter_features"])``)."""
    boxes: list[Tensor]              # per image, resized frame
    labels: Tensor                   # (R,) 1 person, 0 background, -1 between the IoU thresholds
    pids: Tensor                     # (R,) identity of the matched GT; UNLABELED for background
    regression_targets: Tensor       # (R, 4)
    image_ids: Tensor                # (R,) image of each row
    members: dict[str, tuple[Tensor, Tensor]]


class RoIBatchBuilder:
    """Collects each image's RoIs (sampled proposals, then chosen cached boxes) and where every
    cached box came from; ``finish`` labels all rows against the GT."""

    def __init__(self, groups: list[str]):
        self.boxes: list[Tensor] = []
        self.rows: dict[str, list[Tensor]] = {g: [] for g in groups}
        self.src: dict[str, list[Tensor]] = {g: [] for g in groups}
        self.row_offset = 0
        self.src_offset = {g: 0 for g in groups}

    def add_image(self, sampled: Tensor, cached: Tensor, chosen: dict[str, Tensor],
                  target: dict) -> None:
        """sampled: the image's sampled proposals; cached: the chosen cached boxes, group after
        group in ``chosen``'s order (group -> rows in the target's cached tensors)."""
        start = self.row_offset + sampled.shape[0]
        for g, c in chosen.items():
            self.rows[g].append(torch.arange(start, start + c.numel(), device=sampled.device))
            self.src[g].append(c + self.src_offset[g])
            start += c.numel()
            self.src_offset[g] += target[CACHED_BOX_KEYS[g]].shape[0]
        self.boxes.append(torch.cat((sampled, cached)))
        self.row_offset = start

    def finish(self, targets, matcher: det_utils.Matcher, box_coder: det_utils.BoxCoder
               ) -> RoIBatch:
        gt_boxes = [t["boxes"].to(b.dtype) for t, b in zip(targets, self.boxes)]
        matched_idxs, labels = assign_targets_to_proposals(self.boxes, gt_boxes, matcher)
        pids = matched_pids(matched_idxs, labels, [t["pids"] for t in targets])
        matched_gt = [g[m] if g.numel() else torch.zeros_like(b)
                      for g, m, b in zip(gt_boxes, matched_idxs, self.boxes)]
        regression = box_coder.encode(matched_gt, self.boxes)
        device = self.boxes[0].device
        image_ids = torch.cat([torch.full((b.shape[0],), i, dtype=torch.int64, device=device)
                               for i, b in enumerate(self.boxes)])
        members = {g: (torch.cat(self.rows[g]), torch.cat(self.src[g])) for g in self.rows}
        return RoIBatch(self.boxes, torch.cat(labels), torch.cat(pids), torch.cat(regression),
                        image_ids, members)


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
                 jitter_distill: FeatureDistill | None = None,
                 roi_share: float | None = None):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.reid_head = reid_head
        self.oim = oim
        self.proposal_matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh,
                                                  allow_low_quality_matches=False)
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.roi_share = roi_share
        self.box_coder = det_utils.BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        self.oim_weight = oim_weight
        self.feature_distill = feature_distill
        self.relation_distill = relation_distill
        self.detector_distill = detector_distill
        self.jitter_distill = jitter_distill

    # -------------------------------------------------------------- shared pieces
    def box_features(self, features: dict[str, Tensor], boxes: list[Tensor],
                     image_shapes: list[tuple[int, int]]) -> Tensor:
        """(R, C) res5 features of the per-image boxes, RoI-pooled from ``feat_res4``."""
        # boxes stay float32 (a bf16 box is off by pixels); roi_align autocasts to float32
        pooled = self.box_roi_pool(features, [b.float() for b in boxes], image_shapes)
        if pooled.shape[0] == 0:
            return features["feat_res4"].new_zeros((0, self.box_predictor.cls_score.in_features))
        return self.box_head(pooled)

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
        for boxes_key, other in (("boxes", "gt_features"), ("proposal_boxes", "proposal_logits"),
                                 ("proposal_boxes", "proposal_refined_boxes"),
                                 ("jitter_boxes", "jitter_features")):
            if other not in self.required_keys():
                continue
            for i, t in enumerate(targets):
                if t[other].shape[0] != t[boxes_key].shape[0]:
                    raise ValueError(f"target {i}: {t[other].shape[0]} {other} rows for "
                                     f"{t[boxes_key].shape[0]} {boxes_key}")

    # -------------------------------------------------------------- training
    def _cached_groups(self, targets) -> dict[str, list[Tensor]]:
        """Per group of cached boxes the enabled terms train on, per image: the row numbers
        (in that image's cached tensors) of the boxes that may join the RoI batch."""
        rows = lambda key: [torch.arange(t[key].shape[0], device=t[key].device) for t in targets]
        groups = {}
        if self.feature_distill is not None or self.relation_distill is not None:
            groups["gt"] = rows("boxes")
        if self.detector_distill is not None:
            groups["teacher"] = self._teacher_proposal_rows(targets)
        if self.jitter_distill is not None:
            groups["jitter"] = rows("jitter_boxes")
        return groups

    def _teacher_proposal_rows(self, targets) -> list[Tensor]:
        """Per image: rows of the usable cached teacher proposals (degenerate ones dropped),
        a random ``num_proposals`` of them when more are cached."""
        n = self.detector_distill.num_proposals
        out = []
        for t in targets:
            p, r = t["proposal_boxes"], t["proposal_refined_boxes"]
            ok = ((p[:, 2:] - p[:, :2]) >= 1).all(dim=1) & ((r[:, 2:] - r[:, :2]) > 0).all(dim=1)
            idx = torch.where(ok)[0]
            if 0 < n < idx.numel():
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:n]]
            out.append(idx)
        return out

    def _choose_cached(self, candidates: dict[str, Tensor]) -> dict[str, Tensor]:
        """One image: the candidate rows of each group that join this step's RoI batch. Without
        a share, all of them; with one, at most ``share * batch`` boxes: GT boxes first, then a
        uniformly random subset of the other groups' boxes."""
        budget = None if self.roi_share is None else \
            int(self.roi_share * self.batch_size_per_image)
        chosen = {}
        if "gt" in candidates:
            chosen["gt"] = _random_subset(candidates["gt"], budget)
            budget = None if budget is None else budget - chosen["gt"].numel()
        others = [n for n in candidates if n != "gt"]
        if others:
            pooled = torch.cat([candidates[n] for n in others])
            group = torch.cat([torch.full_like(candidates[n], k) for k, n in enumerate(others)])
            keep = _random_subset(torch.arange(pooled.numel(), device=pooled.device), budget)
            for k, name in enumerate(others):
                chosen[name] = pooled[keep[group[keep] == k]]
        return chosen

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                                ) -> RoIBatch:
        """This step's RoIs, per image: the student's proposals sampled balanced (torchvision's
        rule) followed by the cached boxes chosen for the distillation terms. Every row is
        labelled against the GT the same way, so cached boxes are detection and OIM samples too;
        with ``roi_share`` they take their place in the batch instead of adding to it."""
        cached = self._cached_groups(targets)
        batch = RoIBatchBuilder(list(cached))
        for i, (props, t) in enumerate(zip(proposals, targets)):
            gt = t["boxes"].to(props.dtype)
            chosen = self._choose_cached({n: rows[i] for n, rows in cached.items()})
            extra = torch.cat([props.new_zeros((0, 4))] + [
                t[CACHED_BOX_KEYS[n]][c].to(props.dtype) for n, c in chosen.items()])
            size = self.batch_size_per_image
            max_pos = int(size * self.positive_fraction)
            if self.roi_share is not None:  # the cached boxes take their place in the batch
                labels = assign_targets_to_proposals([extra], [gt], self.proposal_matcher)[1][0]
                size -= extra.shape[0]
                max_pos = max(0, max_pos - int((labels > 0).sum()))
            # every GT box is a candidate (torchvision adds them), unless already chosen
            left = torch.ones(gt.shape[0], dtype=torch.bool, device=gt.device)
            left[chosen.get("gt", left.new_zeros(0, dtype=torch.int64))] = False
            pool = torch.cat((props, gt[left]))
            pool_labels = assign_targets_to_proposals([pool], [gt], self.proposal_matcher)[1][0]
            keep = balanced_sample(pool_labels, size, max_pos)
            batch.add_image(pool[keep], extra, chosen, t)
        return batch.finish(targets, self.proposal_matcher, self.box_coder)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        self.check_targets(targets)
        rois = self.select_training_samples(proposals, targets)
        feats = self.box_features(features, rois.boxes, image_shapes)
        class_logits, box_regression = self.box_predictor(feats)
        class_logits, box_regression = class_logits.float(), box_regression.float()
        scored = rois.labels >= 0  # a cached box between the IoU thresholds: distillation only
        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits[scored], box_regression[scored], [rois.labels[scored]],
            [rois.regression_targets[scored]])
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        fg = rois.labels > 0
        embedded = fg.clone()
        for name in ("gt", "jitter"):
            if name in rois.members:
                embedded[rois.members[name][0]] = True
        rows = torch.where(embedded)[0]
        emb = torch.zeros(feats.shape[0], self.reid_head.dim, device=feats.device)
        emb = emb.index_put((rows,), self.reid_head(feats[rows]).float()) if rows.numel() \
            else emb  # only the rows computed are ever read

        losses.update(self._embedding_distill(emb, rois, targets))  # before OIM updates
        if "teacher" in rois.members:
            losses.update(self._detector_distill(class_logits, box_regression, rois, targets))

        fg_labels = self.oim.pid_to_label(rois.pids[fg])
        losses["loss_oim"] = self.oim_weight * self.oim(emb[fg], fg_labels)
        return losses

    def _embedding_distill(self, emb: Tensor, rois: RoIBatch, targets) -> dict[str, Tensor]:
        """Feature, relation and jitter terms on the chosen GT / jittered boxes' embeddings."""
        out = {}
        if "gt" in rois.members:
            rows, src = rois.members["gt"]
            teacher = torch.cat([t["gt_features"] for t in targets])[src]
            if self.feature_distill is not None:
                out["loss_distill_feature"] = self.feature_distill(emb[rows], teacher)
            if self.relation_distill is not None:  # a copy: OIM updates the LUT in place
                out["loss_distill_relation"] = self.relation_distill(
                    emb[rows], self.oim.lut.clone(), teacher)
        if "jitter" in rois.members:
            rows, src = rois.members["jitter"]
            teacher = torch.cat([t["jitter_features"] for t in targets])[src]
            out["loss_distill_jitter"] = self.jitter_distill(emb[rows], teacher)
        return out

    def _detector_distill(self, class_logits: Tensor, box_regression: Tensor, rois: RoIBatch,
                          targets) -> dict[str, Tensor]:
        """Box head outputs on the chosen teacher proposals vs the teacher's, cached."""
        rows, src = rois.members["teacher"]
        logits = class_logits[rows]
        deltas = box_regression[rows].reshape(rows.numel(), box_regression.shape[1] // 4,
                                              4)[:, 1]  # the person class
        props = torch.cat(rois.boxes)[rows].float()
        t_logits = torch.cat([t["proposal_logits"] for t in targets])[src].float()
        t_refined = torch.cat([t["proposal_refined_boxes"] for t in targets])[src].float()
        teacher_deltas = self.box_coder.encode_single(t_refined, props)
        with torch.no_grad():
            student_boxes = self.box_coder.decode_single(deltas.detach(), props)
        mask = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
        image_of_row = rois.image_ids[rows]
        for i, t in enumerate(targets):
            sel = image_of_row == i
            mask[sel] = teacher_better_mask(props[sel], student_boxes[sel], t_refined[sel],
                                            t["boxes"].to(props.dtype),
                                            self.detector_distill.fg_iou_thresh)
        mask &= torch.isfinite(teacher_deltas).all(dim=1)
        return self.detector_distill(logits, t_logits, deltas, teacher_deltas, mask)

    # -------------------------------------------------------------- inference
    def detect(self, features: dict[str, Tensor], proposals: list[Tensor],
               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: person boxes (resized frame) and scores after threshold, NMS and top-k."""
        feats = self.box_features(features, proposals, image_shapes)
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
        feats = self.box_features(features, boxes, image_shapes)
        if feats.shape[0] == 0:
            emb = feats.new_zeros((0, self.reid_head.dim))
        else:
            emb = self.reid_head(feats).float()
        return list(emb.split([b.shape[0] for b in boxes]))
