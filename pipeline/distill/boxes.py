"""The cached boxes the distillation terms train on, as named groups, and which of them join a
training step's RoI batch.

Groups, in batch order: "gt" (the ground-truth boxes, whose teacher features are cached),
"proposals" (the teacher's cached proposals) and "jitter" (DKD's jittered GT boxes). A group's
boxes are ordinary RoIs (labelled against the GT, so they get the detection and OIM losses too).
With ``roi_share`` they take at most that fraction of the RoI batch (GT boxes first, then a
uniformly random subset of the other groups' boxes, drawn anew each step) and the sampler fills
the rest with the student's own proposals: the res5 trunk on the RoIs is most of a step's cost,
so distillation then adds almost none. Without a share they come on top of a full batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.models.roi_heads import ExtraBoxes

#: group -> the target key holding its boxes (after the dataset's flip and the resize)
GROUP_BOX_KEYS = {"gt": "boxes", "proposals": "proposal_boxes", "jitter": "jitter_boxes"}
#: groups whose every box gets a Re-ID embedding (their terms compare embeddings)
EMBEDDED_GROUPS = ("gt", "jitter")


def random_subset(rows: Tensor, limit: int | None) -> Tensor:
    """``rows`` whole when ``limit`` is None or not exceeded, else ``limit`` random ones, in
    their original order."""
    if limit is None or rows.numel() <= limit:
        return rows
    return rows[torch.randperm(rows.numel(), device=rows.device)[:limit].sort().values]


def choose_rows(candidates: dict[str, Tensor], budget: int | None) -> dict[str, Tensor]:
    """One image: the candidate rows of each group that join the batch. At most ``budget``
    boxes (None: all): GT boxes first, then a random subset of the other groups pooled."""
    chosen = {}
    if "gt" in candidates:
        chosen["gt"] = random_subset(candidates["gt"], budget)
        budget = None if budget is None else budget - chosen["gt"].numel()
    others = [name for name in candidates if name != "gt"]
    if others:
        pooled = torch.cat([candidates[n] for n in others])
        group = torch.cat([torch.full_like(candidates[n], k) for k, n in enumerate(others)])
        keep = random_subset(torch.arange(pooled.numel(), device=pooled.device), budget)
        for k, name in enumerate(others):
            chosen[name] = pooled[keep[group[keep] == k]]
    return chosen


@dataclass
class CachedBoxChoice:
    """One step's cached boxes: what the heads get (:class:`ExtraBoxes`) and, per group, the
    rows of the chosen boxes in that group's cached tensors concatenated over images (the
    order the heads put them in the batch), for the terms to read their targets by."""

    extra: ExtraBoxes
    source_rows: dict[str, Tensor]


def choose_boxes(targets: list[dict], candidates: dict[str, list[Tensor]], budget: int | None,
                 wants_identity_table: bool) -> CachedBoxChoice:
    """Every image's cached boxes for this step (``candidates``: group -> per image, the rows
    that may join, in group order), drawn before the heads sample."""
    boxes, gt_taken = [], []
    chosen: dict[str, list[Tensor]] = {g: [] for g in candidates}
    for i, t in enumerate(targets):
        rows = choose_rows({g: c[i] for g, c in candidates.items()}, budget)
        for g, r in rows.items():
            chosen[g].append(r)
        boxes.append({g: t[GROUP_BOX_KEYS[g]][r] for g, r in rows.items()})
        gt_taken.append(rows.get("gt", torch.zeros(0, dtype=torch.int64,
                                                   device=t["boxes"].device)))
    extra = ExtraBoxes(boxes, gt_taken, share_batch=budget is not None,
                       embed_groups=tuple(g for g in EMBEDDED_GROUPS if g in candidates),
                       wants_identity_table=wants_identity_table)
    return CachedBoxChoice(extra, {g: _source_rows(targets, g, rows)
                                   for g, rows in chosen.items()})


def _source_rows(targets: list[dict], group: str, chosen: list[Tensor]) -> Tensor:
    out, offset = [], 0
    for t, rows in zip(targets, chosen):
        out.append(rows + offset)
        offset += t[GROUP_BOX_KEYS[group]].shape[0]
    return torch.cat(out)
