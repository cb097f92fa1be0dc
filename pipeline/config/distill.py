"""Config sections of the distillation terms: one sub-section per term, each with ``enabled``
and its weights (:mod:`pipeline.distill.terms` holds the terms that read them)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal


@dataclass(frozen=True)
class LutDistillConfig:
    """Munjal et al. 2019: the OIM table starts as the teacher's identity table, so the OIM loss
    pulls the student toward the teacher's identity centres: a distillation loss, whose weight
    this section sets while the term is on (null: model.oim_weight)."""
    enabled: bool = False
    momentum: float = 1.0             # 1.0 keeps the teacher table fixed; < 1 blends it
    weight: float | None = None       # OIM loss weight while the table is the teacher's


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
    # How the student's losses (its own and the terms') are weighted against each other
    # (pipeline/distill/balance.py). fixed: as the weights above and model.oim_weight set them.
    # uncertainty: each loss also gets a learned log-variance s (Kendall et al. 2018), trained
    # with the student: exp(-s) * loss + s, so a loss that stays large is weighted down, one
    # that is small is weighted up, and the configured weights only set where they start.
    balance: Literal["fixed", "uncertainty"] = "fixed"

    def __post_init__(self):
        if self.roi_share is not None and not 0.0 < self.roi_share <= 1.0:
            raise ValueError(f"distill.roi_share must be in (0, 1] or null, got {self.roi_share}")

    def enabled_terms(self) -> list[str]:
        """Names of the switched-on term sections, in declaration order."""
        return [f.name for f in fields(self)
                if getattr(getattr(self, f.name), "enabled", False)]
