"""Config sections of the end-to-end student: the network (ModelConfig) and the distillation
terms (DistillConfig, one sub-section per term, each with ``enabled`` and ``weight``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    norm: Literal["frozen", "batch"] = "frozen"   # frozen BN (ImageNet init) or trainable BN
    pretrained: bool = False          # ImageNet weights (torch hub's cache; downloaded if missing)
    weights_path: str | None = None   # explicit ImageNet state dict file (implies pretrained)
    freeze_at: int = 0                # stages without gradient: 0 none, 1 stem, 2 +layer1 ...
    min_size: int = 900               # the network's own resize (shorter side)
    max_size: int = 1500
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


@dataclass(frozen=True)
class LutDistillConfig:
    """Munjal et al. 2019: the OIM table starts as the teacher's identity table."""
    enabled: bool = False
    momentum: float = 1.0             # 1.0 keeps the teacher table fixed; < 1 blends it


@dataclass(frozen=True)
class FeatureDistillConfig:
    """Student embedding of each GT box pulled to the teacher's feature of that box."""
    enabled: bool = False
    weight: float = 1.0
    kind: Literal["cosine", "l2"] = "cosine"


@dataclass(frozen=True)
class RelationDistillConfig:
    """Similarity distribution over the identity table (softmax(cos/T)), KL to the teacher's."""
    enabled: bool = False
    weight: float = 1.0
    temperature: float = 0.1


@dataclass(frozen=True)
class DetectorDistillConfig:
    """Box head on the teacher's proposals: soft class targets + teacher-bounded regression."""
    enabled: bool = False
    weight: float = 1.0               # classification term
    reg_weight: float = 1.0           # regression term (0 switches it off)
    temperature: float = 1.0
    cls_loss: Literal["kl", "bce"] = "kl"
    reg_clip: float = 1.0             # per-box cap of the smooth-L1 regression loss
    fg_iou_thresh: float = 0.5        # a proposal regresses only if it matches a GT this well
    num_proposals: int = 32           # random teacher proposals per image (0 = all cached)


@dataclass(frozen=True)
class JitterDistillConfig:
    """DKD spatial-invariant augmentation: jittered boxes' embeddings pulled to the teacher's."""
    enabled: bool = False
    weight: float = 1.0
    kind: Literal["cosine", "l2"] = "cosine"


@dataclass(frozen=True)
class DistillConfig:
    lut: LutDistillConfig = field(default_factory=LutDistillConfig)
    feature: FeatureDistillConfig = field(default_factory=FeatureDistillConfig)
    relation: RelationDistillConfig = field(default_factory=RelationDistillConfig)
    detector: DetectorDistillConfig = field(default_factory=DetectorDistillConfig)
    jitter: JitterDistillConfig = field(default_factory=JitterDistillConfig)
    # The cached boxes the terms train on (GT boxes for feature/relation, teacher proposals,
    # jittered boxes) join the RoI batch as ordinary samples (they get the detection and OIM
    # losses too). roi_share caps them at this fraction of model.roi_batch_size_per_image and
    # the sampler fills the rest from the student's own proposals, so distillation adds no
    # RoIs to the res5 head, the step's main cost (GT boxes first, then a random subset of
    # the others each step). null: every cached box comes on top of a full sampled batch.
    roi_share: float | None = 0.75

    def __post_init__(self):
        if self.roi_share is not None and not 0.0 < self.roi_share <= 1.0:
            raise ValueError(f"distill.roi_share must be in (0, 1] or null, got {self.roi_share}")

    def enabled_terms(self) -> list[str]:
        return [name for name in ("lut", "feature", "relation", "detector", "jitter")
                if getattr(self, name).enabled]

    @property
    def needs_teacher_table(self) -> bool:
        return self.lut.enabled or self.relation.enabled

    @property
    def needs_proposals(self) -> bool:
        return self.detector.enabled

    @property
    def needs_jitter(self) -> bool:
        return self.jitter.enabled
