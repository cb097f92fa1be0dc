"""How a distilled student's losses are weighted against each other (``distill.balance``).

The terms decide what the student learns (:mod:`pipeline.distill.terms`); a balance decides how
much each loss counts. It sees the step's named losses (the network's own and the terms', each
already at its configured weight) and returns the losses the trainer sums:

- ``fixed``: the losses as they are: the configured weights are the balance.
- ``uncertainty``: Kendall et al. 2018: every loss ``L`` gets a learned log-variance ``s``,
  trained with the student, and counts ``exp(-s) * L``; the sum of the ``s`` is one more loss
  (``loss_balance``), so the weight of a loss settles near ``1 / L``: a loss that stays large
  is weighted down, a small one up. The configured weights set where the weights start
  (``s = 0``) and drop out as ``s`` adapts, so the balance needs no per-world tuning.

The log-variances are parameters of the distiller: the optimizer trains them, a checkpoint
saves them and a resume restores them; a loaded model leaves them out with the distiller.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

#: the extra loss of the uncertainty balance (the log-variances' own term)
BALANCE_LOSS = "loss_balance"


class FixedBalance(nn.Module):
    """The losses at their configured weights (``loss_names``: every loss it may see)."""

    def __init__(self, loss_names: Sequence[str] = ()):
        super().__init__()

    def forward(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return losses

    def weights(self) -> dict[str, Tensor]:
        """The balance's own weight of each loss, for the training log (none here)."""
        return {}


class UncertaintyBalance(FixedBalance):
    """A learned log-variance per loss name (Kendall et al. 2018); see the module doc."""

    def __init__(self, loss_names: Sequence[str] = ()):
        super().__init__()
        self.log_vars = nn.ParameterDict({name: nn.Parameter(torch.zeros(()))
                                          for name in loss_names})

    def forward(self, losses):
        unknown = sorted(set(losses) - set(self.log_vars))
        if unknown:  # a loss nobody declared would go unbalanced
            raise ValueError(f"the uncertainty balance has no weight for losses {unknown}; "
                             f"it weighs {sorted(self.log_vars)}")
        out = {name: torch.exp(-self.log_vars[name]) * loss for name, loss in losses.items()}
        out[BALANCE_LOSS] = torch.stack([self.log_vars[name] for name in losses]).sum()
        return out

    def weights(self):
        return {f"weight_{name}": torch.exp(-s.detach()) for name, s in self.log_vars.items()}


#: distill.balance -> its class (the config's Literal lists the same names)
BALANCES: dict[str, type[FixedBalance]] = {"fixed": FixedBalance,
                                          "uncertainty": UncertaintyBalance}


def build_balance(kind: str, loss_names: Sequence[str]) -> FixedBalance:
    """The balance ``kind`` (``distill.balance``) over the losses named ``loss_names``."""
    if kind not in BALANCES:
        raise ValueError(f"distill.balance {kind!r}; expected one of {sorted(BALANCES)}")
    return BALANCES[kind](loss_names)
