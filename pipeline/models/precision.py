"""Mixed precision, defined once: bf16 autocast on CUDA, plain float32 elsewhere. (On a CPU with
native bf16, e.g. AVX512_BF16, bf16 runs the student about 1.8x faster but moves detections
near the score threshold; BENCHMARKS.md "Fast inference modes" gives what it costs in mAP, so
the CPU default stays float32, where the exactness checks are made.)"""
from __future__ import annotations

import torch


def autocast(device: str | torch.device, enabled: bool = True,
             dtype: torch.dtype = torch.bfloat16, *, cpu: bool = False):
    """Context manager: autocast to ``dtype`` when ``enabled`` and ``device`` is CUDA (or the
    CPU, when ``cpu`` asks for it: the fast footage setting)."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=dtype,
                          enabled=enabled and (device.type == "cuda" or cpu))
