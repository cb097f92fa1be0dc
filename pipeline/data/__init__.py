"""Datasets: readers for PRW and CUHK-SYSU, the synthetic world, transforms."""
from __future__ import annotations

from pathlib import Path

from .records import DATASETS, DatasetError, PersonSearchData


def read_dataset(name: str, root: str | Path, *, train: bool = True) -> PersonSearchData:
    """Read a released dataset: ``name`` is "prw" or "cuhk-sysu"; ``root`` its top folder.

    ``train=False`` leaves the training split out (empty): evaluation reads the test split only.
    """
    if name == "prw":
        from .prw import read_prw
        return read_prw(root, train=train)
    if name == "cuhk-sysu":
        from .cuhk_sysu import read_cuhk_sysu
        return read_cuhk_sysu(root, train=train)
    raise DatasetError(f"unknown dataset {name!r}; expected one of {DATASETS}")
