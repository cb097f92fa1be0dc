"""A student built for distillation: the network of :mod:`pipeline.models.student` with the
switched-on terms attached, after one check that the teacher's sizes fit the student."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from pipeline.config import to_dict
from pipeline.config.distill import DistillConfig
from pipeline.config.model import ModelConfig
from pipeline.distill.balance import build_balance
from pipeline.distill.distiller import Distiller
from pipeline.distill.terms import build_terms, identity_rows, term_needs
from pipeline.errors import UserError
from pipeline.models.student import MODEL_ARGS_VERSION, NETWORK_LOSSES, PersonSearchNet, \
    build_network, build_oim


class TeacherMismatchError(UserError, ValueError):
    """What the enabled terms need from the teacher is missing or does not fit the student."""


def check_teacher_fits(model_cfg: ModelConfig, distill_cfg: DistillConfig, table,
                       teacher_embedding_dim: int | None) -> None:
    """The one check that what the terms need from the teacher is there and fits."""
    terms = distill_cfg.enabled_terms()
    if term_needs(distill_cfg).teacher_table and table is None:
        raise TeacherMismatchError(f"distillation terms {terms} need the teacher identity "
                                   "table (teacher_identity_table=cache.identity_table())")
    if any(t in terms for t in ("feature", "jitter")) and not teacher_embedding_dim:
        raise TeacherMismatchError("feature/jitter distillation need the teacher's embedding "
                                   "size (pass teacher_identity_table or teacher_embedding_dim)")
    if "lut" in terms and table.shape[1] != model_cfg.embedding_dim:
        raise TeacherMismatchError(
            f"distill.lut uses the teacher identity table as the OIM table, so "
            f"model.embedding_dim ({model_cfg.embedding_dim}) must equal the teacher's "
            f"embedding size in the cache ({table.shape[1]}): set model.embedding_dim: "
            f"{table.shape[1]}")


def oim_weighted(model_cfg: ModelConfig, distill_cfg: DistillConfig) -> ModelConfig:
    """The network's config with the OIM weight the lut term sets while it is on (its table is
    the teacher's, so OIM is then one of the distillation losses)."""
    lut = distill_cfg.lut
    if not lut.enabled or lut.weight is None:
        return model_cfg
    return replace(model_cfg, oim_weight=float(lut.weight))


def build_student(model_cfg: ModelConfig, distill_cfg: DistillConfig | None,
                  identity_pids: np.ndarray, teacher_identity_table=None, *,
                  teacher_embedding_dim: int | None = None) -> PersonSearchNet:
    """The student network plus its distiller.

    identity_pids: raw training identities (any order, UNLABELED excluded); K = unique count.
    teacher_identity_table: ``TeacherCache.identity_table()`` (pids, features, counts) or the
    (K, Dt) features in contiguous order (lut and relation terms). teacher_embedding_dim: Dt
    when no table is given (feature / jitter terms).
    """
    distill_cfg = distill_cfg or DistillConfig()
    ids = np.unique(np.asarray(identity_pids, dtype=np.int64))
    table = None
    if teacher_identity_table is not None:
        table = torch.from_numpy(identity_rows(ids, teacher_identity_table))
        teacher_embedding_dim = table.shape[1]
    check_teacher_fits(model_cfg, distill_cfg, table, teacher_embedding_dim)
    lut = distill_cfg.lut.enabled
    oim = build_oim(model_cfg, ids, lut_init=table if lut else None,
                    momentum=distill_cfg.lut.momentum if lut else None)
    model_args = {"version": MODEL_ARGS_VERSION, "model": to_dict(model_cfg),
                  "distill": to_dict(distill_cfg), "identity_pids": [int(p) for p in ids],
                  "teacher_embedding_dim": int(teacher_embedding_dim or 0) or None,
                  "has_teacher_table": table is not None}
    model = build_network(oim_weighted(model_cfg, distill_cfg), oim, model_args)
    terms = build_terms(distill_cfg, model_cfg.embedding_dim, teacher_embedding_dim, table)
    if terms:
        loss_names = [*NETWORK_LOSSES, *(n for t in terms.values() for n in t.loss_names)]
        model.distiller = Distiller(terms, batch_size_per_image=model_cfg.roi_batch_size_per_image,
                                    roi_share=distill_cfg.roi_share,
                                    balance=build_balance(distill_cfg.balance, loss_names))
    return model
