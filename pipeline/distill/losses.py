"""Distillation losses as plain functions: tensors in, scalar out (no model, no config).

Every function returns an exact 0 that is still attached to the graph when it gets no rows, so
an image without boxes never produces NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FEATURE_KINDS = ("cosine", "l2")
CLS_KINDS = ("kl", "bce")


def _zero(*tensors: Tensor) -> Tensor:
    return sum(t.sum() for t in tensors) * 0.0


def feature_distill_loss(student: Tensor, teacher: Tensor, kind: str = "cosine") -> Tensor:
    """Pull student features (N, D) to teacher features (N, D) of the same boxes.

    cosine: mean of 1 - cos; l2: mean squared distance of the L2-normalised vectors.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature distillation kind {kind!r}; expected one of {FEATURE_KINDS}")
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "features differ in shape (project the student first)")
    if student.shape[0] == 0:
        return _zero(student)
    teacher = teacher.detach()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    return (s - t).pow(2).sum(dim=1).mean()


def relation_distill_loss(student: Tensor, student_table: Tensor, teacher: Tensor,
                          teacher_table: Tensor, temperature: float = 0.1) -> Tensor:
    """KL(teacher || student) between similarity distributions over the K identities.

    student (N, Ds) vs student_table (K, Ds); teacher (N, Dt) vs teacher_table (K, Dt); rows of
    the two tables are the same identities. p = softmax(cos / T). Feature sizes may differ.
    """
    if student.shape[0] != teacher.shape[0] or student_table.shape[0] != teacher_table.shape[0]:
        raise ValueError("relation distillation: student and teacher rows/identities differ "
                         f"({tuple(student.shape)}, {tuple(student_table.shape)}) vs "
                         f"({tuple(teacher.shape)}, {tuple(teacher_table.shape)})")
    if student.shape[0] == 0 or student_table.shape[0] == 0:
        return _zero(student)
    s = F.normalize(student, dim=1) @ F.normalize(student_table, dim=1).t() / temperature
    with torch.no_grad():
        t = F.normalize(teacher, dim=1) @ F.normalize(teacher_table, dim=1).t() / temperature
        p_t = F.softmax(t, dim=1)
    return F.kl_div(F.log_softmax(s, dim=1), p_t, reduction="batchmean")


def soft_logits_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                     kind: str = "kl") -> Tensor:
    """Soft-target classification distillation, (N, C) logits each.

    kl: T^2 * KL(softmax(t/T) || softmax(s/T)) averaged over rows (Hinton et al.);
    bce: binary cross-entropy of the student's softmax probabilities against the teacher's.
    """
    if kind not in CLS_KINDS:
        raise ValueError(f"classifier distillation kind {kind!r}; expected one of {CLS_KINDS}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} vs teacher "
                         f"{tuple(teacher_logits.shape)}")
    if student_logits.shape[0] == 0:
        return _zero(student_logits)
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    if kind == "kl":
        log_p_s = F.log_softmax(student_logits / temperature, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature ** 2
    p_s = F.softmax(student_logits / temperature, dim=1).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(p_s, p_t)


def bounded_regression_loss(student_deltas: Tensor, teacher_deltas: Tensor, mask: Tensor,
                            *, beta: float = 1.0 / 9, clip: float = 1.0) -> Tensor:
    """Regression to the teacher's box deltas only where ``mask`` (teacher better than student).

    Smooth-L1 per row, each row's loss clipped at ``clip`` (a bad teacher box cannot dominate),
    summed over masked rows and divided by all rows (as torchvision's fastrcnn_loss does).
    """
    if student_deltas.shape != teacher_deltas.shape or student_deltas.shape[0] != mask.shape[0]:
        raise ValueError("bounded regression: shapes differ "
                         f"{tuple(student_deltas.shape)}, {tuple(teacher_deltas.shape)}, "
                         f"{tuple(mask.shape)}")
    n = student_deltas.shape[0]
    if n == 0 or not mask.any():
        return _zero(student_deltas)
    rows = F.smooth_l1_loss(student_deltas[mask], teacher_deltas[mask].detach(), beta=beta,
                            reduction="none").sum(dim=1)
    return rows.clamp(max=clip).sum() / n
