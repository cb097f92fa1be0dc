"""The distiller: the switched-on terms of one student, and the one place that asks the heads
for the cached boxes they train on and hands each term its share of the heads' outputs.

The student calls it at four points of a training step: ``check_targets`` (before anything is
computed), ``extra_boxes`` (every cached box that joins the RoI batch, chosen before the heads
run and handed to them as plain tensors), ``forward`` (the terms' losses from the heads'
outputs) and ``balance`` (every loss of the step, weighted: :mod:`pipeline.distill.balance`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.distill.balance import FixedBalance
from pipeline.distill.boxes import GROUP_BOX_KEYS, CachedBoxChoice, choose_boxes
from pipeline.distill.terms import DistillTerm
from pipeline.errors import UserError
from pipeline.models.roi_heads import HeadOutputs


class MissingTargetError(UserError, KeyError):
    """A distillation term is on but the targets lack the cached key it needs."""

    def __str__(self) -> str:
        return str(self.args[0])


class Distiller(nn.Module):
    """terms: name -> term, in the order their losses are computed. roi_share: the fraction of
    ``batch_size_per_image`` the cached boxes may take (None: they come on top). balance:
    weighs all the step's losses (default: as configured)."""

    def __init__(self, terms: dict[str, DistillTerm], *, batch_size_per_image: int,
                 roi_share: float | None = 0.75, balance: FixedBalance | None = None):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.balance = balance or FixedBalance()
        self.groups = [g for g in GROUP_BOX_KEYS if any(t.box_group == g for t in terms.values())]
        self.budget = None if roi_share is None else int(roi_share * batch_size_per_image)

    def check_targets(self, targets: list[dict]) -> None:
        """Every key a term reads is in every target, row-aligned with its boxes."""
        for name, term in self.terms.items():
            for key in term.cache_keys:
                for i, t in enumerate(targets):
                    if key not in t:
                        raise MissingTargetError(
                            f"distillation term {name!r} needs target key {key!r} (from the "
                            f"teacher cache), missing in target {i}; keys present: {sorted(t)}")
            boxes_key = GROUP_BOX_KEYS.get(term.box_group)
            for key in term.cache_keys if boxes_key else ():
                for i, t in enumerate(targets):
                    if key != boxes_key and t[key].shape[0] != t[boxes_key].shape[0]:
                        raise ValueError(f"target {i}: {t[key].shape[0]} {key} rows for "
                                         f"{t[boxes_key].shape[0]} {boxes_key}")

    def extra_boxes(self, targets: list[dict]) -> CachedBoxChoice | None:
        """The cached boxes of this step (targets in the heads' frame), or None without any."""
        if not self.groups:
            return None
        candidates = {}
        for group in self.groups:
            picks = [t.candidate_rows(targets) for t in self.terms.values()
                     if t.box_group == group]
            rows = next((p for p in picks if p is not None), None)
            candidates[group] = rows if rows is not None else [
                torch.arange(t[GROUP_BOX_KEYS[group]].shape[0], device=t["boxes"].device)
                for t in targets]
        wants_table = any(t.needs_identity_table for t in self.terms.values())
        return choose_boxes(targets, candidates, self.budget, wants_table)

    def forward(self, outputs: HeadOutputs, targets: list[dict],
                choice: CachedBoxChoice | None) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for term in self.terms.values():
            if term.box_group is None:
                continue
            rows = outputs.groups[term.box_group]
            losses.update(term(outputs, targets, rows, choice.source_rows[term.box_group]))
        return losses
