"""The end-to-end person-search student, composed like torchvision's GeneralizedRCNN:
transform -> backbone (feat_res4) -> RPN -> RoI heads (box head, Re-ID head + OIM), plus an
optional distiller (:mod:`pipeline.distill`) that the training step consults.

- ``forward(images, targets)`` is training: a dict of named, already weighted losses.
- ``detect(images)`` is gallery detection; ``embed_boxes(images, boxes)`` is query embedding
  (:class:`~pipeline.runtime.searcher.Searcher`). Images are (3,H,W) float in [0,1] at their
  original size; boxes come and go as (N,4) x1,y1,x2,y2 in original pixels.

The network is built from a checkpoint's ``model_args`` alone (:func:`load_student`); the
distiller is a training-time part and is left out of a loaded model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from pipeline.config import from_dict
from pipeline.config.model import ModelConfig
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.backbone import build_resnet_c4
from pipeline.models.checkpoint import load_state, read_checkpoint
from pipeline.models.oim import OIMLoss
from pipeline.models.reid_head import ReIDHead
from pipeline.models.roi_heads import PersonSearchRoIHeads
from pipeline.models.transform import PersonSearchTransform, boxes_to_original, input_size, \
    set_input_size

MODEL_ARGS_VERSION = 1
#: state-dict prefix of the training-only part (the distiller), dropped when a trained student
#: is loaded for use
TRAINING_ONLY = "distiller."
#: the losses forward() returns on its own: RPN, box head, OIM (a distiller adds its terms')
NETWORK_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                  "loss_oim")


class RPNHeadFloat32(RPNHead):
    """RPNHead whose outputs are float32 even under autocast, so proposals decode in float32
    (a bf16 box is off by several pixels at 1500 px)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class PersonSearchRPN(RegionProposalNetwork):
    """torchvision's RPN with a public setter for the proposals kept at inference (torchvision
    keeps them in a private dict; this is the one place that knows)."""

    @property
    def test_proposals(self) -> int:
        return int(self._post_nms_top_n["testing"])

    def set_test_proposals(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"proposals must be at least 1, got {count}")
        self._post_nms_top_n = {**self._post_nms_top_n, "testing": int(count)}


class PersonSearchNet(nn.Module):
    def __init__(self, transform: PersonSearchTransform, backbone: nn.Module,
                 rpn: RegionProposalNetwork, roi_heads: PersonSearchRoIHeads,
                 model_args: dict | None = None, distiller: nn.Module | None = None):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.distiller = distiller
        self.model_args = model_args  # plain data; save_checkpoint stores it

    # the run settings of a Searcher (pipeline/runtime/searcher.py)
    @property
    def embedding_dim(self) -> int:
        return int(self.roi_heads.reid_head.dim)

    @property
    def input_size(self) -> tuple[float, float]:
        return input_size(self.transform)

    def set_input_size(self, min_size: float, max_size: float | None = None) -> None:
        set_input_size(self.transform, min_size, max_size)

    @property
    def proposals(self) -> int:
        return self.rpn.test_proposals

    def set_proposals(self, count: int) -> None:
        self.rpn.set_test_proposals(count)

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
        distiller = self.distiller
        if distiller is not None:
            distiller.check_targets(targets)
        images_t, targets = self.transform(images, targets)
        features = self._features(images_t.tensors)
        proposals, rpn_losses = self.rpn(images_t, features, targets)
        choice = distiller.extra_boxes(targets) if distiller is not None else None
        outputs = self.roi_heads(features, proposals, images_t.image_sizes, targets,
                                 choice.extra if choice is not None else None)
        losses = {**rpn_losses, **outputs.detection_losses}
        if distiller is not None:
            losses.update(distiller(outputs, targets, choice))
        losses.update(self.roi_heads.reid_loss(outputs))  # last: OIM updates its table
        return distiller.balance(losses) if distiller is not None else losses

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

def build_transform(m: ModelConfig) -> PersonSearchTransform:
    return PersonSearchTransform(m.min_size, m.max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))


def build_rpn(m: ModelConfig, in_channels: int) -> PersonSearchRPN:
    anchors = AnchorGenerator(sizes=(tuple(m.anchor_sizes),),
                              aspect_ratios=(tuple(m.aspect_ratios),))
    return PersonSearchRPN(
        anchors, RPNHeadFloat32(in_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=m.rpn_fg_iou_thresh, bg_iou_thresh=m.rpn_bg_iou_thresh,
        batch_size_per_image=m.rpn_batch_size_per_image,
        positive_fraction=m.rpn_positive_fraction,
        pre_nms_top_n={"training": m.rpn_pre_nms_top_n_train,
                       "testing": m.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": m.rpn_post_nms_top_n_train,
                        "testing": m.rpn_post_nms_top_n_test},
        nms_thresh=m.rpn_nms_thresh)


def build_oim(m: ModelConfig, identity_pids: np.ndarray, *, lut_init: Tensor | None = None,
              momentum: float | None = None) -> OIMLoss:
    """OIM over the training identities; ``lut_init``/``momentum`` override the config's
    (a teacher's identity table, kept fixed with momentum 1)."""
    return OIMLoss(identity_pids, m.embedding_dim, scalar=m.oim_scalar,
                   momentum=m.oim_momentum if momentum is None else momentum,
                   queue_size=m.oim_queue_size, lut_init=lut_init)


def build_roi_heads(m: ModelConfig, res5: nn.Module, oim: OIMLoss) -> PersonSearchRoIHeads:
    return PersonSearchRoIHeads(
        MultiScaleRoIAlign(["feat_res4"], m.roi_output_size, m.roi_sampling_ratio),
        res5, FastRCNNPredictor(res5.out_channels, 2),
        ReIDHead(res5.out_channels, m.embedding_dim), oim,
        fg_iou_thresh=m.roi_fg_iou_thresh, bg_iou_thresh=m.roi_bg_iou_thresh,
        batch_size_per_image=m.roi_batch_size_per_image,
        positive_fraction=m.roi_positive_fraction,
        score_thresh=m.det_score_thresh, nms_thresh=m.det_nms_thresh,
        detections_per_img=m.det_detections_per_img, oim_weight=m.oim_weight)


def build_network(m: ModelConfig, oim: OIMLoss, model_args: dict | None = None
                  ) -> PersonSearchNet:
    """The student network (no distiller) around an OIM module."""
    backbone, res5 = build_resnet_c4(m.backbone, norm=m.norm, pretrained=m.pretrained,
                                     weights_path=m.weights_path, frozen_stages=m.frozen_stages)
    transform = build_transform(m)  # after the backbone: keeps the RNG draws of model init
    rpn = build_rpn(m, backbone.out_channels)
    return PersonSearchNet(transform, backbone, rpn, build_roi_heads(m, res5, oim), model_args)


def model_config_from_args(model_args: dict) -> ModelConfig:
    """The network's config from a checkpoint's ``model_args`` (weights
    come from the checkpoint, so no ImageNet file is needed)."""
    if not isinstance(model_args, dict) or model_args.get("version") != MODEL_ARGS_VERSION:
        raise ValueError(f"not student model_args (version {MODEL_ARGS_VERSION}): {model_args!r}"
                         [:300])
    return from_dict(ModelConfig, {**model_args["model"], "pretrained": False,
                                   "weights_path": None})


def load_student(checkpoint: str | Path, device: str | torch.device = "cpu") -> PersonSearchNet:
    """A trained student from a checkpoint alone, in eval mode on ``device``, without its
    training-only parts."""
    ckpt = read_checkpoint(checkpoint)
    args = ckpt.get("model_args")
    model_cfg = model_config_from_args(args)
    oim = build_oim(model_cfg, np.asarray(args["identity_pids"], dtype=np.int64))
    model = build_network(model_cfg, oim, args)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith(TRAINING_ONLY)}
    load_state(model, state, source=f"checkpoint {checkpoint}")
    return model.to(device).eval()
