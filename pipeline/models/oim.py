"""Online Instance Matching (Xiao et al. 2017): a look-up table of labeled identities plus a
circular queue of unlabeled persons, cross-entropy over their scaled cosine similarities.

Identities index the table through a contiguous mapping fixed at construction: the sorted raw
dataset ids ``identity_pids`` (PRW's are not contiguous) -> rows 0..K-1. A box whose identity is
:data:`UNLABELED` takes no part in the cross-entropy and is pushed into the queue instead.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.data.records import UNLABELED

IGNORE = -1  # contiguous label of a box without identity (never a table row)


class OIMLoss(nn.Module):
    """OIM with a LUT (K, D) updated by momentum and a queue (Q, D) of unlabeled features.

    momentum: lut[y] <- normalise(momentum * lut[y] + (1 - momentum) * x); 1.0 keeps the table
    fixed (e.g. a teacher's identity table, Munjal et al. 2019). Buffers ``lut``, ``queue``,
    ``queue_ptr`` and ``identity_pids`` are saved in checkpoints.
    """

    def __init__(self, identity_pids: np.ndarray | Tensor, dim: int, *, scalar: float = 30.0,
                 momentum: float = 0.5, queue_size: int = 5000,
                 lut_init: Tensor | None = None):
        super().__init__()
        pids = torch.as_tensor(np.asarray(identity_pids), dtype=torch.int64).reshape(-1)
        if pids.numel() and (pids == UNLABELED).any():
            raise ValueError("identity_pids must not contain the UNLABELED id")
        pids = torch.unique(pids)  # sorted; defines the contiguous mapping
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"OIM momentum must lie in [0, 1], got {momentum}")
        self.scalar = float(scalar)
        self.momentum = float(momentum)
        self.register_buffer("identity_pids", pids)
        lut = torch.zeros(pids.numel(), dim)
        if lut_init is not None:
            if tuple(lut_init.shape) != (pids.numel(), dim):
                raise ValueError(f"LUT init of shape {tuple(lut_init.shape)} does not fit "
                                 f"({pids.numel()}, {dim})")
            lut = F.normalize(lut_init.float(), dim=1)
        self.register_buffer("lut", lut)
        self.register_buffer("queue", torch.zeros(int(queue_size), dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    @property
    def num_identities(self) -> int:
        return int(self.identity_pids.numel())

    def pid_to_label(self, pids: Tensor) -> Tensor:
        """Raw ids -> rows 0..K-1; UNLABELED -> IGNORE. An unknown labeled id is an error."""
        pids = pids.to(torch.int64)
        table = self.identity_pids
        if table.numel() == 0:
            idx = torch.zeros_like(pids)
            found = torch.zeros_like(pids, dtype=torch.bool)
        else:
            idx = torch.searchsorted(table, pids).clamp(max=table.numel() - 1)
            found = table[idx] == pids
        unlabeled = pids == UNLABELED
        unknown = ~found & ~unlabeled
        if unknown.any():
            raise ValueError(f"identities {pids[unknown].unique().tolist()[:10]} are not in the "
                             f"OIM table built from {table.numel()} training identities")
        return torch.where(found, idx, torch.full_like(idx, IGNORE))

    def logits(self, x: Tensor) -> Tensor:
        """(N, D) embeddings -> (N, K + Q) scaled similarities to [LUT; queue]."""
        table = torch.cat([self.lut, self.queue]).to(x.dtype)  # a copy: updates may follow
        return self.scalar * x @ table.t()

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """x (N, D) L2-normalised embeddings of person boxes; labels (N,) contiguous rows or
        IGNORE (unlabeled). Returns the mean cross-entropy over labeled boxes (0 without any,
        still attached to the graph) and, in training, updates LUT and queue."""
        logits = self.logits(x)
        labeled = labels != IGNORE
        if labeled.any():
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        else:
            loss = logits.sum() * 0.0
        if self.training:
            self.update(x.detach(), labels)
        return loss

    @torch.no_grad()
    def update(self, x: Tensor, labels: Tensor) -> None:
        """Momentum update of the LUT rows and push of the unlabeled features into the queue.
        Under DistributedDataParallel every rank applies the features of all ranks (in rank
        order), so the tables stay identical and no rank's people are lost."""
        x, labels = gather_from_all_ranks(x.to(self.lut.dtype), labels)
        m = self.momentum
        if m < 1.0:  # one row at a time: repeated identities update in sequence, as in OIM
            for feat, y in zip(x[labels != IGNORE], labels[labels != IGNORE]):
                self.lut[y] = F.normalize(m * self.lut[y] + (1.0 - m) * feat, dim=0)
        size = self.queue.shape[0]
        unlabeled = x[labels == IGNORE]
        if size == 0 or unlabeled.shape[0] == 0:
            return
        unlabeled = unlabeled[-size:]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(unlabeled.shape[0], device=x.device) + ptr) % size
        self.queue[idx] = unlabeled
        self.queue_ptr.fill_((ptr + unlabeled.shape[0]) % size)


def gather_from_all_ranks(x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of every rank's (x, labels), concatenated in rank order; unchanged outside a
    multi-process group. Ranks may hold different numbers of rows."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, labels
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    rows = max(counts)
    padded_x = x.new_zeros((rows, x.shape[1]))
    padded_x[: x.shape[0]] = x
    padded_y = labels.new_full((rows,), IGNORE)
    padded_y[: labels.shape[0]] = labels
    all_x = [torch.empty_like(padded_x) for _ in range(world)]
    all_y = [torch.empty_like(padded_y) for _ in range(world)]
    dist.all_gather(all_x, padded_x)
    dist.all_gather(all_y, padded_y)
    return (torch.cat([t[:n] for t, n in zip(all_x, counts)]),
            torch.cat([t[:n] for t, n in zip(all_y, counts)]))
