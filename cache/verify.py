"""Checking a teacher cache: schema, shapes, offsets, finiteness, unit norms, fingerprints."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .key import split_fingerprint
from .reader import CacheMismatchError, TeacherCache
from .schema import GROUPS, PER_VIEW, SHARED, VIEWS, resolve_shape

BLOCK = 65536                 # rows checked at a time (bounded memory)
NORM_TOLERANCE = {True: 5e-3, False: 1e-4}   # float16 features are coarser


def _check_offsets(f, group: str, num_images: int, problems: list[str]) -> int:
    offsets = f[f"{group}/offsets"][:]
    if offsets.shape != (num_images + 1,):
        problems.append(f"{group}/offsets has shape {offsets.shape}, expected ({num_images + 1},)")
        return -1
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        problems.append(f"{group}/offsets do not start at 0 and rise")
    return int(offsets[-1])


def _check_rows(f, path: str, rows: int, shape: tuple, problems: list[str], unit: bool,
                tol: float) -> None:
    if path not in f:
        problems.append(f"{path} is missing")
        return
    ds = f[path]
    if ds.shape != (rows, *shape):
        problems.append(f"{path} has shape {ds.shape}, expected ({rows}, {', '.join(map(str, shape))})")
        return
    for start in range(0, rows, BLOCK):
        block = ds[start:start + BLOCK]
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            problems.append(f"{path} holds non-finite values")
            return
        if unit:
            norms = np.linalg.norm(block.astype(np.float64), axis=1)
            bad = np.abs(norms - 1.0) > tol
            if bad.any():
                problems.append(f"{path}: {int(bad.sum())} rows are not unit-norm "
                                f"(e.g. row {start + int(np.argmax(bad))}: {norms[bad][0]:.4f})")
                return


def _check_identities(f, dim: int, tol: float, problems: list[str]) -> None:
    pids, counts = f["identities/pids"][:], f["identities/counts"][:]
    _check_rows(f, "identities/features", len(pids), (dim,), problems, unit=True, tol=tol)
    if len(np.unique(pids)) != len(pids):
        problems.append("identities/pids are not unique")
    gt = f["gt/pids"][:]
    expected = np.unique(gt[gt >= 0], return_counts=True)
    if not (np.array_equal(expected[0], pids) and np.array_equal(expected[1], counts)):
        problems.append("identities/pids or counts disagree with the labeled GT boxes")


def verify_cache(path: str | Path, records=None, dataset: str | None = None) -> list[str]:
    """Every problem found (empty when the cache is sound). With ``records`` (the training
    split) and ``dataset``, also checks the cache was built from that data."""
    try:
        cache = TeacherCache(path)
    except (CacheMismatchError, OSError, KeyError) as e:
        return [f"cannot open: {e}"]
    m, problems = cache.meta, []
    tol = NORM_TOLERANCE[m.float16]
    views = VIEWS if m.has_flip else VIEWS[:1]
    with h5py.File(path, "r") as f:
        if len(cache.names) != m.num_images:
            problems.append(f"{len(cache.names)} image names but num_images = {m.num_images}")
        for group in GROUPS:
            rows = _check_offsets(f, group, len(cache.names), problems)
            if rows < 0:
                continue
            for name, (shape, _) in SHARED[group].items():
                _check_rows(f, f"{group}/{name}", rows, resolve_shape(shape, m.embedding_dim),
                            problems, unit=False, tol=tol)
            for view in views:
                for name, (shape, _) in PER_VIEW[group].items():
                    _check_rows(f, f"{group}/{view}/{name}", rows,
                                resolve_shape(shape, m.embedding_dim), problems,
                                unit=(name == "features"), tol=tol)
        _check_identities(f, m.embedding_dim, tol, problems)
    if records is not None:
        try:
            cache.check_compatible(split_fingerprint(records), dataset=dataset or m.dataset)
        except CacheMismatchError as e:
            problems.append(str(e))
        names = [r.name for r in records]
        if names != cache.names:
            problems.append("image names differ from the dataset's training split")
    cache.close()
    return problems
