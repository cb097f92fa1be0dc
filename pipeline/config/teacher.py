"""Config of stage one: the two teachers (detector, Re-ID) and the teacher cache they write.

``load_config("configs/teacher/prw.yaml", TeacherConfig)``. Teacher checkpoints go to
``out_dir/detector.pt`` and ``out_dir/reid.pt`` (training run dirs ``out_dir/detector/`` and
``out_dir/reid/``); the cache file goes to ``cache.dir/<key>.h5`` (``cache.key.cache_path``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config.data import DataConfig

Backbone = Literal["resnet18", "resnet34", "resnet50"]


@dataclass(frozen=True)
class DetectorConfig:
    """Faster R-CNN + ResNet-FPN person detector (torchvision parts, 2 classes), SGD."""
    backbone: Backbone = "resnet50"
    fpn: bool = True
    fpn_channels: int = 256            # FPN width (narrower for small CPU teachers)
    box_head_dim: int = 1024           # width of the two-layer box head
    pretrained: bool = False           # ImageNet weights from torch's local cache; never downloads
    frozen_stages: int = 0             # ResNet stages without gradient, from the stem (as the
                                       # student's model.frozen_stages): 0 all train
    min_size: int = 900                # input size: shorter image side after resize
    max_size: int = 1500
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05
    epochs: int = 10
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    milestones: tuple[int, ...] = (8,)  # epochs where the lr drops x0.1
    grad_clip: float | None = 10.0
    flip: bool = True                  # random horizontal flip in training
    seed: int = 0
    device: str = "cpu"
    amp: bool = False                  # bf16 autocast on CUDA
    workers: int = 2


@dataclass(frozen=True)
class ReidConfig:
    """Strong-baseline Re-ID on ground-truth crops: label-smoothed ID loss + batch-hard
    triplet, BN-neck, PK sampling, Adam."""
    backbone: Backbone = "resnet50"
    pretrained: bool = False
    embedding_dim: int = 256           # linear projection when the backbone width differs
    crop_height: int = 256
    crop_width: int = 128
    ids_per_batch: int = 16            # P identities x K crops per batch
    crops_per_id: int = 4
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    jitter: float = 0.05               # random box jitter, fraction of the box size
    epochs: int = 60
    optimizer: Literal["adam"] = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_iters: int = 200
    milestones: tuple[int, ...] = (40,)
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    workers: int = 2


@dataclass(frozen=True)
class CacheConfig:
    """What stage one writes per image (the layout is in :mod:`cache.schema`)."""
    dir: str = "work/cache"
    proposals_per_image: int = 64      # top detections, padded with the best RPN proposals
    jitter_per_box: int = 4            # jittered copies of each labeled GT box
    jitter_min_iou: float = 0.5        # their IoU with the GT spreads from here up to 1
    flip: bool = True                  # also store the flipped-image view
    float16: bool = False              # features as float16
    seed: int = 0                      # jitter boxes: (seed, image index)
    batch_size: int = 4                # images per teacher forward
    workers: int = 2                   # image-decoding DataLoader workers
    device: str = "cpu"
    amp: bool = True                   # bf16 autocast on CUDA (ignored on CPU)


TEACHER_PARTS = ("detector", "reid")


@dataclass(frozen=True)
class TeacherConfig:
    data: DataConfig = field(default_factory=DataConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    reid: ReidConfig = field(default_factory=ReidConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    out_dir: str = "work/teachers/prw"

    def checkpoint(self, part: str) -> Path:
        """Where the trained teacher ``part`` ("detector" or "reid") lies: ``out_dir/<part>.pt``."""
        if part not in TEACHER_PARTS:
            raise ValueError(f"unknown teacher part {part!r}; expected one of {TEACHER_PARTS}")
        return Path(self.out_dir) / f"{part}.pt"


# Settings that change what lands in the cache (device, batch size, workers, amp do not).
CACHE_KEY_FIELDS = ("proposals_per_image", "jitter_per_box", "jitter_min_iou", "flip", "float16",
                    "seed")
# Teacher settings used at inference (they change the teacher outputs for the same weights).
DETECTOR_INFERENCE_FIELDS = ("backbone", "fpn", "fpn_channels", "box_head_dim", "min_size",
                             "max_size", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
                             "box_detections_per_img", "box_score_thresh")
REID_INFERENCE_FIELDS = ("backbone", "embedding_dim", "crop_height", "crop_width")
# Names the key was first computed with: hashed under the old name, a renamed field keeps every
# cache built before the rename findable.
KEY_NAMES = {"embedding_dim": "embed_dim"}


def cache_key_settings(cfg: TeacherConfig) -> dict:
    """The config content that the cache key hashes (besides weights and data)."""
    def section(obj, names):
        return {KEY_NAMES.get(k, k): getattr(obj, k) for k in names}
    return {"dataset": cfg.data.dataset,
            "cache": section(cfg.cache, CACHE_KEY_FIELDS),
            "detector": section(cfg.detector, DETECTOR_INFERENCE_FIELDS),
            "reid": section(cfg.reid, REID_INFERENCE_FIELDS)}
