"""Re-ID embedding head: pooled RoI feature -> linear -> BN -> L2-normalised embedding."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ReIDHead(nn.Module):
    """(N, in_channels) pooled box features -> (N, dim) unit-norm embeddings."""

    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__()
        self.proj = nn.Linear(in_channels, dim)
        self.bn = nn.BatchNorm1d(dim)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.zeros_(self.proj.bias)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.training and x.shape[0] <= 1:
            # batch statistics of one vector are undefined: use the running ones
            x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                             self.bn.bias, training=False, eps=self.bn.eps)
        else:
            x = self.bn(x)
        return F.normalize(x, dim=1)
