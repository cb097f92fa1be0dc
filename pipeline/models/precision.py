"""Mixed precision, defined once: bf16 autocast on CUDA, plain float32 elsewhere (a CPU gains
nothing from bf16 convolutions here, and the exactness checks are made in float32)."""
from __future__ import annotations

import torch


def autocast(device: str | torch.device, enabled: bool = True,
             dtype: torch.dtype = torch.bfloat16):
    """Context manager: autocast to ``dtype`` when ``enabled`` and ``device`` is CUDA."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=dtype,
                          enabled=enabled and device.type == "cuda")
