"""Opening HDF5 files with one clear sentence when a file is unusable.

h5py reports an unreadable file as ``OSError: Unable to synchronously open file (file signature
not found)`` or ``(truncated file: eof = ..., stored_eof = ...)``; the file's first bytes say
more plainly what it is: empty, a truncated HDF5 file, a PyTorch file, or something else.
"""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import file_head

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"        # torch.save's format
TEXT = h5py.string_dtype("utf-8")


def what_is_wrong(path: str | Path, error: BaseException) -> str:
    """Why h5py could not open ``path`` (raising ``error``), in a few words."""
    head, unreadable = file_head(path)
    if unreadable:
        return unreadable
    if head.startswith(HDF5_MAGIC):
        sizes = re.search(r"eof = (\d+).*stored_eof = (\d+)", str(error))
        if sizes:
            return (f"it is a truncated HDF5 file ({int(sizes[1]):,} of its "
                    f"{int(sizes[2]):,} bytes)")
        return f"it is a damaged HDF5 file ({str(error).strip()[:160]})"
    if head.startswith(ZIP_MAGIC):
        return "it is a PyTorch file (zip archive), not HDF5"
    return "it is not an HDF5 file (unrecognised content)"


def open_hdf5(path: str | Path, error_type: type[Exception], what: str) -> h5py.File:
    """``h5py.File(path, "r")``; ``error_type`` with a one-line message when it fails
    (``what`` names the kind of file, e.g. "teacher cache")."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error_type(f"{what} {path} is unusable: {what_is_wrong(path, e)}") from None


def text_column(values) -> np.ndarray:
    """A list of str as an object array h5py writes with dtype :data:`TEXT`."""
    return np.array([str(v) for v in values], dtype=object)


def read_text(values) -> list[str]:
    """An HDF5 string column (bytes or str items) -> list of str."""
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x)
            for x in np.asarray(values).ravel()]
