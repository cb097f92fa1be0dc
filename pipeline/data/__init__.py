"""Datasets: readers for PRW and CUHK-SYSU, the synthetic world, transforms."""
from __future__ import annotations

from pathlib import Path

from .cuhk_sysu import read_cuhk_sysu
from .prw import read_prw
from .records import DATASETS, DatasetError, PersonSearchData

READERS = {"prw": read_prw, "cuhk-sysu": read_cuhk_sysu}


def read_dataset(name: str, root: str | Path) -> PersonSearchData:
    """Read a released dataset: ``name`` is "prw" or "cuhk-sysu"; ``root`` its top folder."""
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    return READERS[name](root)
