"""Teacher detector: torchvision Faster R-CNN with a ResNet-FPN backbone, 2 classes
(background, person), no pretrained weights unless asked for (never downloads).

Besides the usual ``model(images)`` detection, :func:`score_given_boxes` runs the box head on
GIVEN boxes (the cache stores the teacher's logits and regressed boxes for them), and
:func:`detect_and_score` does detection plus RPN proposals plus scoring in one backbone pass.
All boxes in and out are x1, y1, x2, y2 in ORIGINAL image pixels.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import misc as misc_ops
from torchvision.ops import boxes as box_ops

from pipeline.models.backbone import _pretrained_state, freeze_stages

NUM_CLASSES = 2
PERSON = 1
POOL = 7  # RoIAlign output size of the box head (torchvision's default)


class TeacherDetector(FasterRCNN):
    """Faster R-CNN (torchvision) over ``backbone`` + FPN; ``model_args`` rebuild it."""

    def __init__(self, *, backbone: str = "resnet50", pretrained: bool = False,
                 frozen_stages: int = 0, fpn_channels: int = 256,
                 box_head_dim: int = 1024, min_size: int = 900, max_size: int = 1500,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_post_nms_top_n_train: int = 2000,
                 rpn_pre_nms_top_n_test: int = 1000, rpn_post_nms_top_n_test: int = 1000,
                 box_batch_size_per_image: int = 512, box_detections_per_img: int = 100,
                 box_score_thresh: float = 0.05, frozen_bn: bool | None = None):
        self_args = dict(locals())
        self_args.pop("self")
        self_args.pop("__class__", None)
        # Frozen BN only makes sense over ImageNet statistics; from scratch BN must train.
        frozen_bn = pretrained if frozen_bn is None else frozen_bn
        norm = misc_ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        resnet = getattr(torchvision.models, backbone)(weights=None, norm_layer=norm)
        if pretrained:
            resnet.load_state_dict(_pretrained_state(backbone, None))
        freeze_stages(resnet, frozen_stages)
        widths = [resnet.inplanes // 8 * 2 ** i for i in range(4)]  # layer1..layer4 outputs
        body = BackboneWithFPN(resnet, {f"layer{i + 1}": str(i) for i in range(4)}, widths,
                               fpn_channels)
        box_head = TwoMLPHead(body.out_channels * POOL * POOL, box_head_dim)
        super().__init__(body, num_classes=None, box_head=box_head,
                         box_predictor=FastRCNNPredictor(box_head_dim, NUM_CLASSES),
                         min_size=min_size, max_size=max_size,
                         rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
                         rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
                         rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                         rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
                         box_batch_size_per_image=box_batch_size_per_image,
                         box_detections_per_img=box_detections_per_img,
                         box_score_thresh=box_score_thresh)
        # rebuilt from the state dict alone: no ImageNet file needed, same norm layers
        self.model_args = {**self_args, "pretrained": False, "frozen_bn": frozen_bn}


def build_teacher_detector(cfg) -> TeacherDetector:
    """``cfg``: :class:`pipeline.config.teacher.DetectorConfig`."""
    if not cfg.fpn:
        raise ValueError("detector.fpn=false is not supported: the teacher is ResNet-FPN")
    return TeacherDetector(
        backbone=cfg.backbone, pretrained=cfg.pretrained, frozen_stages=cfg.frozen_stages,
        fpn_channels=cfg.fpn_channels, box_head_dim=cfg.box_head_dim,
        min_size=cfg.min_size, max_size=cfg.max_size,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.box_score_thresh)


def _ratios(image_sizes, original_sizes, like: Tensor) -> list[Tensor]:
    """Per image (4,) factors original -> resized coordinates (x, y, x, y)."""
    out = []
    for (h, w), (oh, ow) in zip(image_sizes, original_sizes):
        out.append(torch.tensor([w / ow, h / oh, w / ow, h / oh], dtype=like.dtype,
                                device=like.device))
    return out


def _score_on_features(model: FasterRCNN, features, image_sizes, original_sizes,
                       boxes_per_image: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Box head on given boxes (original pixels) over computed ``features``."""
    heads = model.roi_heads
    ratios = _ratios(image_sizes, original_sizes, next(iter(features.values())).float())
    resized = [b.float().reshape(-1, 4) * r for b, r in zip(boxes_per_image, ratios)]
    if sum(len(b) for b in resized) == 0:
        empty = ratios[0].new_zeros((0, 4)) if ratios else torch.zeros((0, 4))
        return empty.new_zeros((0, NUM_CLASSES)), empty
    pooled = heads.box_roi_pool(features, resized, image_sizes)
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    logits, deltas = logits.float(), deltas.float()
    counts = [len(b) for b in resized]
    decoded = heads.box_coder.decode(deltas, resized).reshape(-1, NUM_CLASSES, 4)[:, PERSON]
    refined = []
    for boxes, size, r in zip(decoded.split(counts), image_sizes, ratios):
        refined.append(box_ops.clip_boxes_to_image(boxes, size) / r)
    return logits, (torch.cat(refined) if refined else decoded)


def _prepare(model: FasterRCNN, images: list[Tensor]):
    original_sizes = [tuple(int(s) for s in im.shape[-2:]) for im in images]
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    return image_list, features, original_sizes


@torch.no_grad()
def score_given_boxes(model: FasterRCNN, images: list[Tensor],
                      boxes_per_image: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Teacher outputs for given boxes.

    images: (3, H, W) float [0, 1] at original size; boxes_per_image: (Ni, 4) x1, y1, x2, y2 in
    original pixels. Returns logits (sum Ni, 2) [background, person] and refined boxes
    (sum Ni, 4): the person-class regression applied to each box, clipped to the image, in
    original pixels. Rows follow the input order, image by image. Call in eval mode.
    """
    if len(images) != len(boxes_per_image):
        raise ValueError(f"{len(images)} images but {len(boxes_per_image)} box lists")
    image_list, features, original_sizes = _prepare(model, images)
    return _score_on_features(model, features, image_list.image_sizes, original_sizes,
                              boxes_per_image)


@torch.no_grad()
def detect_and_score(model: FasterRCNN, images: list[Tensor], num_proposals: int,
                     extra_boxes: list[Tensor] | None = None) -> list[dict]:
    """One backbone pass: detections, the proposal set and teacher outputs on it.

    Proposals per image = the final detections (score-sorted) cut to ``num_proposals``; when
    there are fewer, padded with the next-best RPN proposals (objectness order), so every
    image gets exactly ``num_proposals`` rows unless the RPN itself has fewer. ``extra_boxes``
    (original pixels) are scored too. Returns per image {"detections": {"boxes", "scores"},
    "proposal_boxes" (P,4), "proposal_logits" (P,2), "proposal_refined_boxes" (P,4),
    "extra_logits", "extra_refined_boxes"}; all boxes in original pixels.
    """
    image_list, features, original_sizes = _prepare(model, images)
    rpn_boxes, _ = model.rpn(image_list, features)
    dets, _ = model.roi_heads(features, rpn_boxes, image_list.image_sizes)
    dets = model.transform.postprocess(dets, image_list.image_sizes, original_sizes)
    ratios = _ratios(image_list.image_sizes, original_sizes, rpn_boxes[0].float())
    proposals = []
    for det, rpn, r in zip(dets, rpn_boxes, ratios):
        boxes = det["boxes"].float()[:num_proposals]
        need = num_proposals - len(boxes)
        if need > 0:
            boxes = torch.cat([boxes, rpn.float()[:need] / r])
        proposals.append(boxes)
    extra = extra_boxes or [b.new_zeros((0, 4)) for b in proposals]
    both = [torch.cat([p, e.float().to(p.device)]) for p, e in zip(proposals, extra)]
    logits, refined = _score_on_features(model, features, image_list.image_sizes,
                                         original_sizes, both)
    out, start = [], 0
    for det, p, e in zip(dets, proposals, extra):
        n, m = len(p), len(e)
        out.append({"detections": det, "proposal_boxes": p,
                    "proposal_logits": logits[start:start + n],
                    "proposal_refined_boxes": refined[start:start + n],
                    "extra_logits": logits[start + n:start + n + m],
                    "extra_refined_boxes": refined[start + n:start + n + m]})
        start += n + m
    return out
