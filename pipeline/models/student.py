"""The end-to-end person-search student, composed like torchvision's GeneralizedRCNN:
transform -> backbone (feat_res4) -> RPN -> RoI heads (box head, Re-ID head + OIM, distillation).

- ``forward(images, targets)`` is training: a dict of named, already weighted losses.
- ``detect(images)`` is gallery detection; ``embed_boxes(images, boxes)`` is query embedding
  (the Searcher protocol of CONTRACTS.md section 3). Images are (3,H,W) float in [0,1] at their
  original size; boxes come and go as (N,4) x1,y1,x2,y2 in original pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from pipeline.config import from_dict, to_dict
from pipeline.config.model import DistillConfig, ModelConfig
from pipeline.distill.terms import DetectorDistill, FeatureDistill, RelationDistill
from pipeline.models.backbone import build_resnet_c4
from pipeline.models.oim import OIMLoss
from pipeline.models.reid_head import ReIDHead
from pipeline.models.roi_heads import PersonSearchRoIHeads
from pipeline.models.transform import PersonSearchTransform, boxes_to_original

MODEL_ARGS_VERSION = 1
IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as torchvision's detectors
IMAGE_STD = (0.229, 0.224, 0.225)


class RPNHeadFloat32(RPNHead):
    """RPNHead whose outputs are float32 even under autocast, so proposals decode in float32
    (a bf16 box is off by several pixels at 1500 px)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class PersonSearchNet(nn.Module):
    def __init__(self, transform: PersonSearchTransform, backbone: nn.Module,
                 rpn: RegionProposalNetwork, roi_heads: PersonSearchRoIHeads,
                 model_args: dict | None = None):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.model_args = model_args  # plain data; save_checkpoint stores it

    def _features(self, image_tensors: Tensor) -> dict[str, Tensor]:
        return {"feat_res4": self.backbone(image_tensors)}

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training step: images (3,H,W) in [0,1]; targets with "boxes" (N,4), "pids" (N,)
        (UNLABELED = -1) and the cached teacher keys the enabled distillation terms need.
        Returns weighted losses (sum them)."""
        if not self.training:
            raise RuntimeError("forward computes training losses; call .train() first, or use "
                               "detect()/embed_boxes() for inference")
        if targets is None or len(targets) != len(images):
            raise ValueError("forward needs one target dict per image")
        self.roi_heads.check_targets(targets)
        images_t, targets = self.transform(images, targets)
        features = self._features(images_t.tensors)
        proposals, rpn_losses = self.rpn(images_t, features, targets)
        roi_losses = self.roi_heads(features, proposals, images_t.image_sizes, targets)
        return {**rpn_losses, **roi_losses}

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Gallery mode: per image {"boxes" (N,4) original pixels, "scores" (N,),
        "embeddings" (N,D) unit norm}. Needs eval mode (the RPN's test settings)."""
        if self.training:
            raise RuntimeError("detect() needs eval mode: call .eval() first")
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        images_t, _ = self.transform(images)
        features = self._features(images_t.tensors)
        proposals, _ = self.rpn(images_t, features)
        boxes, scores = self.roi_heads.detect(features, proposals, images_t.image_sizes)
        embeddings = self.roi_heads.embed(features, boxes, images_t.image_sizes)
        return [{"boxes": boxes_to_original(b, size, orig), "scores": s, "embeddings": e}
                for b, s, e, size, orig in zip(boxes, scores, embeddings, images_t.image_sizes,
                                               original_sizes)]

    def embed_boxes(self, images: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Query mode: embeddings (Ni,D), unit norm, of the given boxes (Ni,4) original pixels."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box tensors")
        targets = [{"boxes": b.to(im.device, torch.float32).reshape(-1, 4)}
                   for im, b in zip(images, boxes)]
        images_t, targets = self.transform(images, targets)
        features = self._features(images_t.tensors)
        return self.roi_heads.embed(features, [t["boxes"] for t in targets],
                                    images_t.image_sizes)


# ------------------------------------------------------------------------------ building

def _ordered_teacher_table(identity_pids: np.ndarray, teacher_identity_table) -> np.ndarray:
    """Teacher features re-ordered to the student's contiguous identities (sorted pids).

    teacher_identity_table: (pids, features[, counts]) as ``TeacherCache.identity_table()``
    returns, or a (K, D) array already in the order of ``np.unique(identity_pids)``."""
    ids = np.unique(np.asarray(identity_pids, dtype=np.int64))
    if isinstance(teacher_identity_table, (tuple, list)):
        t_pids = np.asarray(teacher_identity_table[0], dtype=np.int64)
        t_feats = np.asarray(teacher_identity_table[1], dtype=np.float32)
        row = {int(p): i for i, p in enumerate(t_pids)}
        missing = [int(p) for p in ids if int(p) not in row]
        if missing:
            raise ValueError(f"the teacher identity table lacks {len(missing)} of the student's "
                             f"{len(ids)} identities, e.g. {missing[:5]}: cache and training "
                             "split differ")
        return t_feats[[row[int(p)] for p in ids]]
    table = np.asarray(teacher_identity_table, dtype=np.float32)
    if table.ndim != 2 or table.shape[0] != len(ids):
        raise ValueError(f"teacher identity table of shape {table.shape} does not fit "
                         f"{len(ids)} identities")
    return table


def build_student(model_cfg: ModelConfig, distill_cfg: DistillConfig | None,
                  identity_pids: np.ndarray, teacher_identity_table=None, *,
                  teacher_feature_dim: int | None = None) -> PersonSearchNet:
    """Build the student from config sections.

    identity_pids: raw training identities (any order, UNLABELED excluded); K = unique count.
    teacher_identity_table: ``TeacherCache.identity_table()`` (pids, features, counts) or the
    (K, Dt) features in contiguous order; needed by the lut and relation terms.
    teacher_feature_dim: Dt when no table is given (feature / jitter terms).
    """
    distill_cfg = distill_cfg or DistillConfig()
    m = model_cfg
    ids = np.unique(np.asarray(identity_pids, dtype=np.int64))
    table = None
    if teacher_identity_table is not None:
        table = torch.from_numpy(_ordered_teacher_table(ids, teacher_identity_table))
        teacher_feature_dim = table.shape[1]
    if distill_cfg.needs_teacher_table and table is None:
        raise ValueError(f"distillation terms {distill_cfg.enabled_terms()} need the teacher "
                         "identity table (teacher_identity_table=cache.identity_table())")
    if (distill_cfg.feature.enabled or distill_cfg.jitter.enabled) and not teacher_feature_dim:
        raise ValueError("feature/jitter distillation need the teacher feature size "
                         "(pass teacher_identity_table or teacher_feature_dim)")

    backbone, res5 = build_resnet_c4(m.backbone, norm=m.norm, pretrained=m.pretrained,
                                     weights_path=m.weights_path, freeze_at=m.freeze_at)
    transform = PersonSearchTransform(m.min_size, m.max_size, list(IMAGE_MEAN), list(IMAGE_STD))
    anchors = AnchorGenerator(sizes=(tuple(m.anchor_sizes),),
                              aspect_ratios=(tuple(m.aspect_ratios),))
    rpn = RegionProposalNetwork(
        anchors, RPNHeadFloat32(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=m.rpn_fg_iou_thresh, bg_iou_thresh=m.rpn_bg_iou_thresh,
        batch_size_per_image=m.rpn_batch_size_per_image,
        positive_fraction=m.rpn_positive_fraction,
        pre_nms_top_n={"training": m.rpn_pre_nms_top_n_train,
                       "testing": m.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": m.rpn_post_nms_top_n_train,
                        "testing": m.rpn_post_nms_top_n_test},
        nms_thresh=m.rpn_nms_thresh)

    lut = distill_cfg.lut
    if lut.enabled and table.shape[1] != m.embedding_dim:
        raise ValueError(f"lut distillation needs model.embedding_dim ({m.embedding_dim}) equal "
                         f"to the teacher feature size ({table.shape[1]})")
    oim = OIMLoss(ids, m.embedding_dim, scalar=m.oim_scalar,
                  momentum=lut.momentum if lut.enabled else m.oim_momentum,
                  queue_size=m.oim_queue_size, lut_init=table if lut.enabled else None)

    d = distill_cfg
    feature = FeatureDistill(m.embedding_dim, teacher_feature_dim, weight=d.feature.weight,
                             kind=d.feature.kind) if d.feature.enabled else None
    jitter = FeatureDistill(m.embedding_dim, teacher_feature_dim, weight=d.jitter.weight,
                            kind=d.jitter.kind) if d.jitter.enabled else None
    relation = RelationDistill(table, weight=d.relation.weight,
                               temperature=d.relation.temperature) if d.relation.enabled else None
    detector = DetectorDistill(weight=d.detector.weight, reg_weight=d.detector.reg_weight,
                               temperature=d.detector.temperature,
                               cls_loss=d.detector.cls_loss, reg_clip=d.detector.reg_clip,
                               fg_iou_thresh=d.detector.fg_iou_thresh,
                               num_proposals=d.detector.num_proposals) \
        if d.detector.enabled else None

    roi_heads = PersonSearchRoIHeads(
        MultiScaleRoIAlign(["feat_res4"], m.roi_output_size, m.roi_sampling_ratio),
        res5, FastRCNNPredictor(res5.out_channels, 2), ReIDHead(res5.out_channels,
                                                                m.embedding_dim), oim,
        fg_iou_thresh=m.roi_fg_iou_thresh, bg_iou_thresh=m.roi_bg_iou_thresh,
        batch_size_per_image=m.roi_batch_size_per_image,
        positive_fraction=m.roi_positive_fraction,
        score_thresh=m.det_score_thresh, nms_thresh=m.det_nms_thresh,
        detections_per_img=m.det_detections_per_img, oim_weight=m.oim_weight,
        feature_distill=feature, relation_distill=relation, detector_distill=detector,
        jitter_distill=jitter,
        roi_share=d.roi_share if d.enabled_terms() else None)

    model_args = {"version": MODEL_ARGS_VERSION, "model": to_dict(m),
                  "distill": to_dict(distill_cfg), "identity_pids": [int(p) for p in ids],
                  "teacher_feature_dim": int(teacher_feature_dim) if teacher_feature_dim else None,
                  "has_teacher_table": table is not None}
    return PersonSearchNet(transform, backbone, rpn, roi_heads, model_args)


def build_student_from_args(model_args: dict) -> PersonSearchNet:
    """Rebuild the (untrained) student a checkpoint's ``model_args`` describe; load the state
    dict afterwards (it holds the LUT and any teacher table)."""
    if not isinstance(model_args, dict) or model_args.get("version") != MODEL_ARGS_VERSION:
        raise ValueError(f"not student model_args (version {MODEL_ARGS_VERSION}): {model_args!r}"
                         [:300])
    model_cfg = from_dict(ModelConfig, model_args["model"])
    distill_cfg = from_dict(DistillConfig, model_args["distill"])
    ids = np.asarray(model_args["identity_pids"], dtype=np.int64)
    dim = model_args.get("teacher_feature_dim")
    table = np.zeros((len(ids), dim), np.float32) if model_args.get("has_teacher_table") else None
    if model_cfg.pretrained or model_cfg.weights_path:  # weights come from the checkpoint
        model_cfg = from_dict(ModelConfig, {**model_args["model"], "pretrained": False,
                                            "weights_path": None})
    return build_student(model_cfg, distill_cfg, ids, table, teacher_feature_dim=dim)


def load_student(checkpoint: str | Path, device: str | torch.device = "cpu") -> PersonSearchNet:
    """A trained student from a checkpoint alone, in eval mode on ``device``."""
    from pipeline.engine.checkpoint import load_checkpoint, read_checkpoint
    ckpt = read_checkpoint(checkpoint)
    model = build_student_from_args(ckpt.get("model_args"))
    load_checkpoint(checkpoint, model)
    return model.to(device).eval()
