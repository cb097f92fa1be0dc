"""The distillation terms: what the student learns from the teacher cache.

A term is a small module that declares what it needs and turns the RoI heads' outputs plus the
cached targets into weighted losses (from :mod:`pipeline.distill.losses`):

- ``cache_keys``: per-image keys it reads from the cache (:data:`cache.schema.ENTRY_KEYS`);
- ``box_group``: the group of cached boxes it trains on ("gt", "proposals" or "jitter",
  :mod:`pipeline.distill.boxes`): those boxes join the step's RoI batch;
- ``needs_teacher_table``: the cache's per-identity table at build time;
- ``needs_identity_table``: a copy of the student's OIM table as it was before this step;
- ``loss_names``: the keys of the losses it may return (the balance weighs each one).

A term that is switched off is not built. Adding a term: a config section in
:mod:`pipeline.config.distill`, a class here and an entry in :data:`TERMS`; the heads are not
touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.distill import losses
from pipeline.distill.matching import teacher_better_mask
from pipeline.models.roi_heads import HeadOutputs


class DistillTerm(nn.Module):
    cache_keys: tuple[str, ...] = ()
    box_group: str | None = None
    needs_teacher_table = False
    needs_identity_table = False
    loss_names: tuple[str, ...] = ()

    def candidate_rows(self, targets: list[dict]) -> list[Tensor] | None:
        """Per image, the cached rows of ``box_group`` that may join the batch (None: all)."""
        return None

    def forward(self, outputs: HeadOutputs, targets: list[dict], rows: Tensor,
                src: Tensor) -> dict[str, Tensor]:
        """Losses from the heads' ``outputs``; ``rows``: this term's group's rows in the RoI
        batch; ``src``: the same boxes' rows in the group's cached tensors concatenated over
        images (e.g. ``cat(t["jitter_features"])[src]``)."""
        return {}


def cached(targets: list[dict], key: str) -> Tensor:
    """A cached key of every image, concatenated in image order."""
    return torch.cat([t[key] for t in targets])


class LutTerm(DistillTerm):
    """Munjal et al. 2019: the OIM look-up table starts as (and, with momentum 1, stays) the
    teacher's per-identity table. It acts when the student is built (the table, and the OIM
    loss weight while it is on: :func:`pipeline.distill.student.oim_weighted`); no loss of its
    own."""
    needs_teacher_table = True



class FeatureTerm(DistillTerm):
    """Student embeddings of the GT boxes pulled to the teacher's features of the same boxes; a
    learned linear projection when the sizes differ."""
    box_group = "gt"
    cache_keys = ("gt_features",)
    feature_key = "gt_features"
    loss_names = ("loss_distill_feature",)

    def __init__(self, student_dim: int, teacher_dim: int, *, weight: float = 1.0,
                 kind: str = "cosine"):
        super().__init__()
        if kind not in losses.FEATURE_KINDS:
            raise ValueError(f"feature distillation kind {kind!r}; expected {losses.FEATURE_KINDS}")
        self.weight, self.kind, self.teacher_dim = float(weight), kind, int(teacher_dim)
        self.proj = nn.Identity() if student_dim == teacher_dim else \
            nn.Linear(student_dim, teacher_dim, bias=False)

    def loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        if teacher.shape[-1] != self.teacher_dim:
            raise ValueError(f"teacher features have {teacher.shape[-1]} dims; this model was "
                             f"built for {self.teacher_dim}")
        s = self.proj(student).float()
        s = F.normalize(s, dim=1) if s.shape[0] else s
        return self.weight * losses.feature_distill_loss(s, teacher.float(), self.kind)

    def forward(self, outputs, targets, rows, src):
        teacher = cached(targets, self.feature_key)[src]
        return {self.loss_names[0]: self.loss(outputs.embeddings[rows], teacher)}


class JitterTerm(FeatureTerm):
    """DKD's spatial-invariant augmentation: embeddings of cached jittered GT boxes pulled to
    the teacher's features of the same jittered boxes (Re-ID that forgives loose boxes)."""
    box_group = "jitter"
    cache_keys = ("jitter_boxes", "jitter_features")
    feature_key = "jitter_features"
    loss_names = ("loss_distill_jitter",)


class RelationTerm(DistillTerm):
    """The student's similarity distribution over its identity table matched to the teacher's
    (teacher GT feature vs the teacher identity table, a fixed buffer whose rows are the
    student's identities), KL at a temperature."""
    box_group = "gt"
    cache_keys = ("gt_features",)
    needs_teacher_table = True
    needs_identity_table = True
    loss_names = ("loss_distill_relation",)

    def __init__(self, teacher_table: Tensor, *, weight: float = 1.0, temperature: float = 0.1):
        super().__init__()
        self.weight, self.temperature = float(weight), float(temperature)
        self.register_buffer("teacher_table", F.normalize(teacher_table.float(), dim=1))

    def forward(self, outputs, targets, rows, src):
        teacher = cached(targets, "gt_features")[src]
        loss = losses.relation_distill_loss(
            outputs.embeddings[rows].float(), outputs.identity_table.float(), teacher.float(),
            self.teacher_table, self.temperature)
        return {self.loss_names[0]: self.weight * loss}


class DetectorTerm(DistillTerm):
    """Box head on the teacher's cached proposals: soft class targets at temperature T and
    regression to the teacher's refined boxes where the teacher beats the student (Chen et al.
    2017's teacher-bounded regression)."""
    box_group = "proposals"
    cache_keys = ("proposal_boxes", "proposal_logits", "proposal_refined_boxes")
    loss_names = ("loss_distill_det_cls", "loss_distill_det_reg")

    def __init__(self, *, weight: float, reg_weight: float, temperature: float, cls_loss: str,
                 reg_clip: float, fg_iou_thresh: float, num_proposals: int):
        super().__init__()
        if cls_loss not in losses.CLS_KINDS:
            raise ValueError(f"detector distillation cls_loss {cls_loss!r}; expected "
                             f"{losses.CLS_KINDS}")
        self.weight, self.reg_weight = float(weight), float(reg_weight)
        self.temperature, self.cls_loss = float(temperature), cls_loss
        self.reg_clip, self.fg_iou_thresh = float(reg_clip), float(fg_iou_thresh)
        self.num_proposals = int(num_proposals)

    def candidate_rows(self, targets):
        """Per image: the usable cached proposals (degenerate ones dropped), a random
        ``num_proposals`` of them when more are cached (0: all)."""
        out = []
        for t in targets:
            p, r = t["proposal_boxes"], t["proposal_refined_boxes"]
            ok = ((p[:, 2:] - p[:, :2]) >= 1).all(dim=1) & ((r[:, 2:] - r[:, :2]) > 0).all(dim=1)
            idx = torch.where(ok)[0]
            if 0 < self.num_proposals < idx.numel():
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:self.num_proposals]]
            out.append(idx)
        return out

    def forward(self, outputs, targets, rows, src):
        logits = outputs.class_logits[rows]
        reg = outputs.box_regression
        deltas = reg[rows].reshape(rows.numel(), reg.shape[1] // 4, 4)[:, 1]  # the person class
        props = outputs.boxes[rows].float()
        t_logits = cached(targets, "proposal_logits")[src].float()
        t_refined = cached(targets, "proposal_refined_boxes")[src].float()
        coder = outputs.box_coder
        teacher_deltas = coder.encode_single(t_refined, props)
        mask = self.regression_mask(props, deltas, t_refined, outputs.image_ids[rows], targets,
                                    coder) & torch.isfinite(teacher_deltas).all(dim=1)
        out = {}
        if self.weight:
            out[self.loss_names[0]] = self.weight * losses.soft_logits_loss(
                logits.float(), t_logits, self.temperature, self.cls_loss)
        if self.reg_weight:
            out[self.loss_names[1]] = self.reg_weight * losses.bounded_regression_loss(
                deltas.float(), teacher_deltas.float(), mask, clip=self.reg_clip)
        return out

    @torch.no_grad()
    def regression_mask(self, props, deltas, t_refined, image_of_row, targets, coder) -> Tensor:
        """Rows where the teacher's refined box overlaps the matched GT more than the student's."""
        student_boxes = coder.decode_single(deltas.detach(), props)
        mask = torch.zeros(props.shape[0], dtype=torch.bool, device=props.device)
        for i, t in enumerate(targets):
            sel = image_of_row == i
            mask[sel] = teacher_better_mask(props[sel], student_boxes[sel], t_refined[sel],
                                            t["boxes"].to(props.dtype), self.fg_iou_thresh)
        return mask


# ------------------------------------------------------------------------------ registry

def _lut(cfg, student_dim, teacher_dim, table):
    return LutTerm()   # the table and momentum go to OIM (pipeline/distill/student.py)


def _feature(cfg, student_dim, teacher_dim, table):
    return FeatureTerm(student_dim, teacher_dim, weight=cfg.weight, kind=cfg.kind)


def _jitter(cfg, student_dim, teacher_dim, table):
    return JitterTerm(student_dim, teacher_dim, weight=cfg.weight, kind=cfg.kind)


def _relation(cfg, student_dim, teacher_dim, table):
    return RelationTerm(table, weight=cfg.weight, temperature=cfg.temperature)


def _detector(cfg, student_dim, teacher_dim, table):
    return DetectorTerm(weight=cfg.weight, reg_weight=cfg.reg_weight,
                        temperature=cfg.temperature, cls_loss=cfg.cls_loss,
                        reg_clip=cfg.reg_clip, fg_iou_thresh=cfg.fg_iou_thresh,
                        num_proposals=cfg.num_proposals)


#: config section name -> (term class, builder(section, student_dim, teacher_dim, table)); the
#: order is the order the terms' losses are computed in.
TERMS: dict[str, tuple[type[DistillTerm], Callable]] = {
    "lut": (LutTerm, _lut),
    "feature": (FeatureTerm, _feature),
    "relation": (RelationTerm, _relation),
    "jitter": (JitterTerm, _jitter),
    "detector": (DetectorTerm, _detector),
}


def build_terms(distill_cfg, student_dim: int, teacher_embedding_dim: int | None,
                teacher_table: Tensor | None) -> dict[str, DistillTerm]:
    """The enabled terms of ``distill_cfg``, in :data:`TERMS` order."""
    unknown = [n for n in distill_cfg.enabled_terms() if n not in TERMS]
    if unknown:
        raise ValueError(f"distillation terms {unknown} have a config section but no term")
    return {name: build(getattr(distill_cfg, name), student_dim, teacher_embedding_dim,
                        teacher_table)
            for name, (_, build) in TERMS.items() if name in distill_cfg.enabled_terms()}


@dataclass(frozen=True)
class TermNeeds:
    """What the enabled terms need from the cache (from their classes, before any is built):
    their names, the per-image cache keys, the cached box groups, whether the per-identity
    teacher table is needed, and (set by the caller that knows the data) whether flipped-image
    teacher outputs are."""

    terms: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    groups: frozenset = frozenset()
    teacher_table: bool = False
    flip: bool = False

    @property
    def proposals(self) -> bool:
        return "proposals" in self.groups

    @property
    def jitter(self) -> bool:
        return "jitter" in self.groups


def term_needs(distill_cfg) -> TermNeeds:
    names = tuple(n for n in distill_cfg.enabled_terms() if n in TERMS)
    classes = [TERMS[n][0] for n in names]
    return TermNeeds(names, tuple(dict.fromkeys(k for c in classes for k in c.cache_keys)),
                     frozenset(c.box_group for c in classes if c.box_group),
                     any(c.needs_teacher_table for c in classes))


def identity_rows(identity_pids: np.ndarray, teacher_table) -> np.ndarray:
    """The teacher's per-identity features re-ordered to the student's contiguous identities
    (sorted pids). ``teacher_table``: (pids, features[, counts]) as
    ``TeacherCache.identity_table()`` returns, or a (K, D) array already in that order."""
    ids = np.unique(np.asarray(identity_pids, dtype=np.int64))
    if isinstance(teacher_table, (tuple, list)):
        t_pids = np.asarray(teacher_table[0], dtype=np.int64)
        t_feats = np.asarray(teacher_table[1], dtype=np.float32)
        row = {int(p): i for i, p in enumerate(t_pids)}
        missing = [int(p) for p in ids if int(p) not in row]
        if missing:
            raise ValueError(f"the teacher identity table lacks {len(missing)} of the student's "
                             f"{len(ids)} identities, e.g. {missing[:5]}: cache and training "
                             "split differ")
        return t_feats[[row[int(p)] for p in ids]]
    table = np.asarray(teacher_table, dtype=np.float32)
    if table.ndim != 2 or table.shape[0] != len(ids):
        raise ValueError(f"teacher identity table of shape {table.shape} does not fit "
                         f"{len(ids)} identities")
    return table
