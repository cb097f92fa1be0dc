"""Distillation terms as small modules: each holds its weight, parameters and whatever it needs
to keep (a projection, a fixed teacher table) and returns a weighted scalar from losses.py.

A term that is switched off is simply not constructed (None in the RoI heads): it computes
nothing and adds no key to the loss dict.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.distill import losses


class FeatureDistill(nn.Module):
    """Student embeddings (N, Ds) pulled to teacher features (N, Dt) of the same boxes; a learned
    linear projection Ds -> Dt when the sizes differ. Used for GT boxes and for jittered boxes."""

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 1.0,
                 kind: str = "cosine"):
        super().__init__()
        if kind not in losses.FEATURE_KINDS:
            raise ValueError(f"feature distillation kind {kind!r}; expected {losses.FEATURE_KINDS}")
        self.weight, self.kind = float(weight), kind
        self.teacher_dim = int(teacher_dim)
        self.proj = nn.Identity() if student_dim == teacher_dim else \
            nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if teacher.shape[-1] != self.teacher_dim:
            raise ValueError(f"teacher features have {teacher.shape[-1]} dims; this model was "
                             f"built for {self.teacher_dim}")
        s = self.proj(student).float()
        s = F.normalize(s, dim=1) if s.shape[0] else s
        return self.weight * losses.feature_distill_loss(s, teacher.float(), self.kind)


class RelationDistill(nn.Module):
    """Student's similarity distribution over its identity table matched to the teacher's
    (teacher feature vs the teacher identity table, a fixed buffer of shape (K, Dt) whose rows
    are the student's contiguous identities)."""

    def __init__(self, teacher_table: Tensor, *, weight: float = 1.0, temperature: float = 0.1):
        super().__init__()
        self.weight, self.temperature = float(weight), float(temperature)
        self.register_buffer("teacher_table", F.normalize(teacher_table.float(), dim=1))

    def forward(self, student: Tensor, student_table: Tensor, teacher: Tensor) -> Tensor:
        return self.weight * losses.relation_distill_loss(
            student.float(), student_table.float(), teacher.float(), self.teacher_table,
            self.temperature)


class DetectorDistill(nn.Module):
    """Box-head distillation on the teacher's proposals: soft class targets at temperature T and
    teacher-bounded regression to the teacher's refined boxes (Chen et al. 2017)."""

    def __init__(self, *, weight: float = 1.0, reg_weight: float = 1.0, temperature: float = 1.0,
                 cls_loss: str = "kl", reg_clip: float = 1.0, fg_iou_thresh: float = 0.5,
                 num_proposals: int = 64):
        super().__init__()
        if cls_loss not in losses.CLS_KINDS:
            raise ValueError(f"detector distillation cls_loss {cls_loss!r}; expected "
                             f"{losses.CLS_KINDS}")
        self.weight, self.reg_weight = float(weight), float(reg_weight)
        self.temperature, self.cls_loss = float(temperature), cls_loss
        self.reg_clip, self.fg_iou_thresh = float(reg_clip), float(fg_iou_thresh)
        self.num_proposals = int(num_proposals)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, student_deltas: Tensor,
                teacher_deltas: Tensor, mask: Tensor) -> dict[str, Tensor]:
        out = {}
        if self.weight:
            out["loss_distill_det_cls"] = self.weight * losses.soft_logits_loss(
                student_logits.float(), teacher_logits.float(), self.temperature, self.cls_loss)
        if self.reg_weight:
            out["loss_distill_det_reg"] = self.reg_weight * losses.bounded_regression_loss(
                student_deltas.float(), teacher_deltas.float(), mask, clip=self.reg_clip)
        return out
