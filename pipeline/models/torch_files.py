"""Reading ``torch.save`` files safely, with one clear sentence when a file is unusable.

Every weights file is read with ``weights_only=True`` (tensors and plain containers only). When
``torch.load`` fails, its message is not passed on: it is long, it suggests loading the file
with ``weights_only=False`` (which runs code from the file -- the wrong advice for a file one
does not trust), and for a damaged file it rarely says that the file is damaged. Instead the
file's first bytes say what it is: empty, a truncated zip archive, another kind of file, or a
complete PyTorch file holding objects that are not plain data.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from pipeline.errors import UserError, file_head

ZIP_MAGIC = b"PK\x03\x04"        # torch.save's default format is a zip archive
PICKLE_MAGIC = b"\x80"           # the legacy format starts with a pickle protocol byte
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class TorchFileError(UserError, ValueError):
    """A file cannot be read as a PyTorch weights file; the message names it and says why."""


def what_is_wrong(path: Path, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``error``, in a few words."""
    head, unreadable = file_head(path)
    if unreadable:
        return unreadable
    if zipfile.is_zipfile(path):
        if isinstance(error, pickle.UnpicklingError):
            return ("it holds Python objects other than tensors and plain containers, which "
                    "are not loaded because that would run code from the file")
        return "it is a damaged PyTorch file (a complete archive with unreadable content)"
    if head.startswith(ZIP_MAGIC):
        return "it is truncated or damaged (an incomplete PyTorch zip archive)"
    if head.startswith(HDF5_MAGIC):
        return "it is an HDF5 file, not a PyTorch file"
    if head.startswith(PICKLE_MAGIC):
        return "it is a damaged or truncated PyTorch file in the legacy format"
    return "it is not a PyTorch file (unrecognised content)"


def load_torch_file(path: str | Path, map_location="cpu", *, what: str = "file"):
    """``torch.load(path, weights_only=True)``; :class:`TorchFileError` when the file is missing
    or unusable (``what`` names the kind of file in the message, e.g. "checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure is described from the file itself
        raise TorchFileError(f"{what} {path} is unusable: {what_is_wrong(path, e)}") from None
