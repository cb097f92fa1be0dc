"""RoI heads of the person-search network: box classifier/regressor and Re-ID embedding with OIM.

All boxes are (N,4) x1,y1,x2,y2 in pixels of the *resized* image (the transform's frame).
A training step's RoIs are one batch per image: the student's own proposals, sampled as
torchvision does, plus any *extra boxes* handed in by name (e.g. the cached boxes the
distillation terms train on). Extra boxes are ordinary samples too (labelled against the GT)
and may take their place in the batch rather than add to it. The heads return, besides their
losses, what was computed on every named group of extra boxes (:class:`HeadOutputs`); what to
learn from that is not their business (:mod:`pipeline.distill`).
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
from pipeline.models.oim import OIMLoss
from pipeline.models.reid_head import ReIDHead


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


@dataclass
class ExtraBoxes:
    """Extra RoIs for one training step, by named group (what a distillation term trains on),
    chosen before the heads run: per image, group -> (n, 4) boxes in the resized frame (in
    group order), and the indices of the image's GT boxes among them (so the sampler does not
    add them a second time)."""

    boxes: list[dict[str, Tensor]]
    gt_taken: list[Tensor]
    share_batch: bool = False        # the extra boxes take their place in the batch (else on top)
    embed_groups: tuple[str, ...] = ()   # groups whose every box gets a Re-ID embedding
    wants_identity_table: bool = False  # keep a copy of the OIM table as it was before this step


@dataclass
class RoIBatch:
    """One training step's RoIs; row tensors are concatenated over images.

    groups: name of a group of extra boxes -> its rows in this batch, image after image."""
    boxes: list[Tensor]              # per image, resized frame
    labels: Tensor                   # (R,) 1 person, 0 background, -1 between the IoU thresholds
    pids: Tensor                     # (R,) identity of the matched GT; UNLABELED for background
    regression_targets: Tensor       # (R, 4)
    image_ids: Tensor                # (R,) image of each row
    groups: dict[str, Tensor]


class RoIBatchBuilder:
    """Collects each image's RoIs (sampled proposals, then the extra boxes group after group)
    and the rows of every group; ``finish`` labels all rows against the GT."""

    def __init__(self):
        self.boxes: list[Tensor] = []
        self.rows: dict[str, list[Tensor]] = {}
        self.row_offset = 0

    def add_image(self, sampled: Tensor, extra: dict[str, Tensor]) -> None:
        start = self.row_offset + sampled.shape[0]
        for name, boxes in extra.items():
            rows = torch.arange(start, start + boxes.shape[0], device=sampled.device)
            self.rows.setdefault(name, []).append(rows)
            start += boxes.shape[0]
        self.boxes.append(torch.cat((sampled, *extra.values())))
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
        groups = {name: torch.cat(rows) for name, rows in self.rows.items()}
        return RoIBatch(self.boxes, torch.cat(labels), torch.cat(pids), torch.cat(regression),
                        image_ids, groups)


@dataclass
class HeadOutputs:
    """What one training step of the heads computed. Rows of the tensors are the RoI batch's."""
    detection_losses: dict[str, Tensor]   # loss_classifier, loss_box_reg
    boxes: Tensor                         # (R, 4) every RoI, resized frame
    image_ids: Tensor                     # (R,)
    labels: Tensor                        # (R,) 1 person, 0 background, -1 neither
    pids: Tensor                          # (R,) identity of the matched GT; UNLABELED else
    class_logits: Tensor                  # (R, 2) float32
    box_regression: Tensor                # (R, 8) float32, both classes' deltas
    embeddings: Tensor                    # (R, D): rows of persons and of embedded groups
    groups: dict[str, Tensor]             # extra box group -> its rows
    box_coder: det_utils.BoxCoder
    identity_table: Tensor | None = None  # a copy of the OIM table, when asked for


class PersonSearchRoIHeads(nn.Module):
    """Box head (2 classes) + Re-ID head with OIM.

    Training: ``forward(features, proposals, image_shapes, targets, extra_boxes) ->
    HeadOutputs`` with the detection losses, then ``reid_loss(outputs)`` (OIM; it updates the
    identity table in place, so it comes after anything that reads the table). Inference:
    ``detect(...)`` for boxes and scores, ``embed(...)`` for embeddings of given boxes.
    """

    def __init__(self, box_roi_pool: MultiScaleRoIAlign, box_head: nn.Module,
                 box_predictor: nn.Module, reid_head: ReIDHead, oim: OIMLoss, *,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5,
                 batch_size_per_image: int = 128, positive_fraction: float = 0.5,
                 bbox_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.4,
                 detections_per_img: int = 100, oim_weight: float = 1.0):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.reid_head = reid_head
        self.oim = oim
        self.proposal_matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh,
                                                  allow_low_quality_matches=False)
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.box_coder = det_utils.BoxCoder(bbox_reg_weights)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img
        self.oim_weight = oim_weight

    # -------------------------------------------------------------- shared pieces
    def box_features(self, features: dict[str, Tensor], boxes: list[Tensor],
                     image_shapes: list[tuple[int, int]]) -> Tensor:
        """(R, C) res5 features of the per-image boxes, RoI-pooled from ``feat_res4``."""
        # boxes stay float32 (a bf16 box is off by pixels); roi_align autocasts to float32
        pooled = self.box_roi_pool(features, [b.float() for b in boxes], image_shapes)
        if pooled.shape[0] == 0:
            return features["feat_res4"].new_zeros((0, self.box_predictor.cls_score.in_features))
        return self.box_head(pooled)

    # -------------------------------------------------------------- training
    def _batch_quota(self, extra_boxes: Tensor, gt: Tensor, share: bool) -> tuple[int, int]:
        """(RoIs, positives) the sampler may still draw for an image, torchvision's rule; when
        the extra boxes share the batch they use up their part of both."""
        size = self.batch_size_per_image
        max_pos = int(size * self.positive_fraction)
        if share:
            labels = assign_targets_to_proposals([extra_boxes], [gt], self.proposal_matcher)[1][0]
            size -= extra_boxes.shape[0]
            max_pos = max(0, max_pos - int((labels > 0).sum()))
        return size, max_pos

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]],
                                extra_boxes: ExtraBoxes | None = None) -> RoIBatch:
        """This step's RoIs, per image: the student's proposals (plus the GT boxes, as
        torchvision adds them) sampled balanced, followed by the extra boxes. Every row is
        labelled against the GT the same way, so extra boxes are detection and OIM samples too."""
        batch = RoIBatchBuilder()
        for i, (props, t) in enumerate(zip(proposals, targets)):
            gt = t["boxes"].to(props.dtype)
            extra, gt_taken = (extra_boxes.boxes[i], extra_boxes.gt_taken[i]) \
                if extra_boxes is not None else ({}, torch.zeros(0, dtype=torch.int64,
                                                                 device=gt.device))
            extra = {name: b.to(props.dtype) for name, b in extra.items()}
            joined = torch.cat([props.new_zeros((0, 4)), *extra.values()])
            share = extra_boxes is not None and extra_boxes.share_batch
            size, max_pos = self._batch_quota(joined, gt, share)
            left = torch.ones(gt.shape[0], dtype=torch.bool, device=gt.device)
            left[gt_taken] = False
            pool = torch.cat((props, gt[left]))
            pool_labels = assign_targets_to_proposals([pool], [gt], self.proposal_matcher)[1][0]
            keep = balanced_sample(pool_labels, size, max_pos)
            batch.add_image(pool[keep], extra)
        return batch.finish(targets, self.proposal_matcher, self.box_coder)

    def _embed_rows(self, feats: Tensor, rois: RoIBatch, embed_groups) -> Tensor:
        """(R, D) embeddings of the foreground rows and of every row of ``embed_groups``; the
        other rows stay zero (never read)."""
        embedded = rois.labels > 0
        for name in embed_groups:
            if name in rois.groups:
                embedded[rois.groups[name]] = True
        rows = torch.where(embedded)[0]
        emb = torch.zeros(feats.shape[0], self.reid_head.dim, device=feats.device)
        if rows.numel():
            emb = emb.index_put((rows,), self.reid_head(feats[rows]).float())
        return emb

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, Tensor]],
                extra_boxes: ExtraBoxes | None = None) -> HeadOutputs:
        rois = self.select_training_samples(proposals, targets, extra_boxes)
        feats = self.box_features(features, rois.boxes, image_shapes)
        class_logits, box_regression = self.box_predictor(feats)
        class_logits, box_regression = class_logits.float(), box_regression.float()
        scored = rois.labels >= 0  # an extra box between the IoU thresholds: no detection loss
        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits[scored], box_regression[scored], [rois.labels[scored]],
            [rois.regression_targets[scored]])
        embed_groups = extra_boxes.embed_groups if extra_boxes is not None else ()
        wants_table = extra_boxes is not None and extra_boxes.wants_identity_table
        return HeadOutputs(
            detection_losses={"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg},
            boxes=torch.cat(rois.boxes), image_ids=rois.image_ids, labels=rois.labels,
            pids=rois.pids, class_logits=class_logits, box_regression=box_regression,
            embeddings=self._embed_rows(feats, rois, embed_groups), groups=rois.groups,
            box_coder=self.box_coder,
            identity_table=self.oim.lut.clone() if wants_table else None)

    def reid_loss(self, outputs: HeadOutputs) -> dict[str, Tensor]:
        """OIM over the foreground rows; updates the identity table and queue in place."""
        fg = outputs.labels > 0
        labels = self.oim.pid_to_label(outputs.pids[fg])
        return {"loss_oim": self.oim_weight * self.oim(outputs.embeddings[fg], labels)}

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
