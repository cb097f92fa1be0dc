"""Helpers every store of detections shares: unit-norm embeddings and UTF-8 text columns."""
from __future__ import annotations

import h5py
import numpy as np

TEXT = h5py.string_dtype("utf-8")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """(N,D) -> float32 rows of unit norm; zero rows stay zero (no NaN)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0).astype(np.float32)


def text_column(values) -> np.ndarray:
    """A list of str as an object array h5py writes with dtype :data:`TEXT`."""
    return np.array([str(v) for v in values], dtype=object)


def read_text(values) -> list[str]:
    """An HDF5 string column (bytes or str items) -> list of str."""
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x)
            for x in np.asarray(values).ravel()]
