"""Config section of the end-to-end student's network (the distillation terms are in
:mod:`pipeline.config.distill`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    norm: Literal["frozen", "batch"] = "frozen"   # frozen BN (ImageNet init) or trainable BN
    pretrained: bool = False          # ImageNet weights (torch hub's cache; downloaded if missing)
    weights_path: str | None = None   # explicit ImageNet state dict file (implies pretrained)
    frozen_stages: int = 0            # ResNet stages without gradient, from the stem: 0 none,
                                      # 1 the stem, 2 stem + layer1, ... (teachers count alike)
    min_size: int = 900               # input size: shorter image side after resize
    max_size: int = 1500              # cap on the longer side
    # RPN on feat_res4 (stride 16)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # RoI heads
    roi_output_size: int = 14         # RoIAlign size on feat_res4; res5 halves it
    roi_sampling_ratio: int = 2
    roi_batch_size_per_image: int = 128
    roi_positive_fraction: float = 0.5
    roi_fg_iou_thresh: float = 0.5
    roi_bg_iou_thresh: float = 0.5
    # Re-ID / OIM
    embedding_dim: int = 256
    oim_scalar: float = 30.0
    oim_momentum: float = 0.5
    oim_queue_size: int = 5000
    oim_weight: float = 1.0
    # detection output
    det_score_thresh: float = 0.05
    det_nms_thresh: float = 0.4
    det_detections_per_img: int = 100


def check_input_size(min_size: float, max_size: float | None) -> None:
    """An input size is 0 < min_size <= max_size (max_size None: chosen by proportion)."""
    if not min_size > 0 or (max_size is not None and not max_size >= min_size):
        raise ValueError(f"input size needs 0 < min_size <= max_size, got {min_size}, {max_size}")


def proportional_max_size(min_size: float, trained_min: float, trained_max: float) -> int:
    """The longer-side cap that keeps the trained max/min proportion (900/1500 -> 600/1000)."""
    return int(round(min_size * trained_max / trained_min))
