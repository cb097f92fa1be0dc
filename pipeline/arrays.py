"""NumPy helpers every layer shares: the one tensor-to-NumPy conversion and unit-norm rows.

Torch-free: a tensor is recognised by its ``detach`` method, so stores and scoring that never
import PyTorch still accept what a network hands them."""
from __future__ import annotations

import numpy as np

UNIT_NORM_TOLERANCE = 1e-5  # embeddings this close to unit norm are taken as normalised


def to_numpy(x, cols: int | None = None, dtype=np.float32) -> np.ndarray:
    """A NumPy copy of a tensor (any device, any float precision) or array-like, as ``dtype``
    (None keeps it); shaped (-1, cols) when ``cols`` is given."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    a = np.array(x, dtype=dtype) if dtype is not None else np.array(x)
    return a.reshape(-1, cols) if cols else a


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """(N,D) -> float32 rows of unit norm; zero rows stay zero (no NaN). Rows already of unit
    norm to float32 precision are kept exactly as given, so that similarities are the dot
    products of the stored numbers, as the classic evaluation computes them."""
    x = np.array(x, np.float32)                               # a copy: the caller's stays as is
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]     # 50x faster than linalg.norm here
    rescale = (norm > 0) & (np.abs(norm - 1) > UNIT_NORM_TOLERANCE)
    return np.divide(x, norm, out=x, where=rescale)
