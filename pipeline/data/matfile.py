"""Reading MATLAB v5 files as the person-search releases store them.

``scipy.io.loadmat`` hands back 2-D arrays for vectors and scalars, object arrays for cells,
structured arrays for structs and nested 1-element arrays for strings. These helpers unwrap
all of that in one place, and turn every surprise into a DatasetError naming the file.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io

from .records import DatasetError

# MAT v5 data element types holding numbers, and their NumPy types (little-endian files)
MI_NUMERIC = {1: "<i1", 2: "<u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8",
              12: "<i8", 13: "<u8"}
MI_MATRIX, MI_COMPRESSED = 14, 15
NUMERIC_CLASSES = range(6, 16)               # mxDOUBLE_CLASS .. mxUINT64_CLASS
COMPLEX_OR_LOGICAL = 0x800 | 0x200


def load_mat(path: str | Path, variable: str | tuple[str, ...]) -> np.ndarray:
    """The first of ``variable`` (a name or names tried in order) found in ``path``."""
    names = (variable,) if isinstance(variable, str) else tuple(variable)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file is missing")
    try:
        fast = numeric_variable(path, names)
    except (struct.error, zlib.error, ValueError):
        fast = None                     # scipy below reads it, or names the damage
    if fast is not None:
        return fast
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises many kinds on a damaged file
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    for name in names:
        if name in content:
            return content[name]
    found = sorted(k for k in content if not k.startswith("__"))
    raise DatasetError(f"{path}: variable {' or '.join(names)} is missing (found: {found})")


def numeric_variable(path: str | Path, names: tuple[str, ...]) -> np.ndarray | None:
    """The first of ``names`` in a little-endian MAT v5 file when it is a plain real numeric
    matrix, as ``scipy.io.loadmat`` returns it (2-D or more, the stored dtype); None for
    anything else (the caller asks scipy, which reads every kind). Walking the elements
    directly is several times faster than loadmat on the small files PRW holds per frame."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 128 or not data.startswith(b"MATLAB 5.0") or data[126:128] != b"IM":
        return None
    found, pos = {}, 128
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<II", data, pos)
        body, pos = data[pos + 8:pos + 8 + size], pos + 8 + size
        if kind == MI_COMPRESSED:
            inner = zlib.decompress(body)
            kind, size = struct.unpack_from("<II", inner, 0)
            body = inner[8:8 + size]
        if kind != MI_MATRIX:
            return None
        name, array = _numeric_matrix(body)
        found.setdefault(name, array)
    chosen = next((n for n in names if n in found), None)
    return None if chosen is None else found[chosen]


def _element(buf: bytes, pos: int) -> tuple[int, bytes, int]:
    """(type, payload, next position) of the data element at ``pos`` (small format too)."""
    first = struct.unpack_from("<I", buf, pos)[0]
    if first >> 16:
        return first & 0xFFFF, buf[pos + 4:pos + 4 + (first >> 16)], pos + 8
    kind, size = struct.unpack_from("<II", buf, pos)
    return kind, buf[pos + 8:pos + 8 + size], pos + 8 + (size + 7) // 8 * 8


def _numeric_matrix(body: bytes) -> tuple[str, np.ndarray | None]:
    """(name, array) of one miMATRIX element; array None when not plain real numbers."""
    _, flags, pos = _element(body, 0)
    _, dims, pos = _element(body, pos)
    _, name, pos = _element(body, pos)
    name = name.decode("latin-1")
    flag_word = struct.unpack_from("<I", flags, 0)[0]
    shape = tuple(int(d) for d in np.frombuffer(dims, "<i4"))
    if flag_word & 0xFF not in NUMERIC_CLASSES or flag_word & COMPLEX_OR_LOGICAL \
            or 0 in shape or pos >= len(body):
        return name, None
    kind, real, _ = _element(body, pos)
    if kind not in MI_NUMERIC or len(real) != np.prod(shape) * np.dtype(MI_NUMERIC[kind]).itemsize:
        return name, None
    return name, np.frombuffer(real, MI_NUMERIC[kind]).reshape(shape, order="F").astype(
        np.dtype(MI_NUMERIC[kind]).newbyteorder("="))


def as_string(value, where: str) -> str:
    """A MATLAB char array / cell holding one string -> str."""
    v = value
    while isinstance(v, np.ndarray):
        if v.dtype.kind in "US":
            flat = v.reshape(-1)
            return "".join(str(s) for s in flat).strip() if flat.size else ""
        if v.size != 1:
            raise DatasetError(f"{where}: expected one string, got an array of shape {v.shape}")
        v = v.reshape(-1)[0]
    if isinstance(v, (str, np.str_)):
        return str(v).strip()
    if isinstance(v, bytes):
        return v.decode().strip()
    raise DatasetError(f"{where}: expected a string, got {type(v).__name__}")


def cell_strings(cell: np.ndarray, where: str) -> list[str]:
    """A (N,1) or (1,N) cell array (or char matrix) of strings -> list of str."""
    if not isinstance(cell, np.ndarray):
        raise DatasetError(f"{where}: expected a cell array of names")
    if cell.dtype.kind in "US":
        if cell.ndim == 2 and cell.shape[1] > 1 and all(len(c) <= 1 for c in cell.reshape(-1)):
            return ["".join(row).strip() for row in cell]   # single characters: one name per row
        return [str(c).strip() for c in cell.reshape(-1)]  # loadmat: one string per row
    if cell.dtype.names is not None:
        raise DatasetError(f"{where}: expected a cell array of names, got a struct array")
    return [as_string(item, f"{where}[{i}]") for i, item in enumerate(cell.reshape(-1))]


def struct_items(value, where: str) -> list:
    """A struct array of any shape (1x1, 1xN, Nx1, 0-d after squeeze), or a cell array of
    structs (what savemat makes of a list of dicts) -> flat list of records, in order."""
    v = value
    while isinstance(v, np.ndarray) and v.dtype == object and v.size == 1 and v.dtype.names is None:
        v = v.reshape(-1)[0]  # a cell wrapping the struct
    if isinstance(v, np.void) and v.dtype.names is not None:
        return [v]
    if isinstance(v, np.ndarray) and v.dtype == object and v.dtype.names is None:
        items = []
        for i, item in enumerate(v.reshape(-1)):
            items.extend(struct_items(item, f"{where}[{i}]"))
        return items
    if not isinstance(v, np.ndarray) or v.dtype.names is None:
        raise DatasetError(f"{where}: expected a struct array, got "
                           f"{type(v).__name__} {getattr(v, 'shape', '')}")
    return list(v.reshape(-1))


def field(record, name: str, where: str):
    names = record.dtype.names or ()
    if name not in names:
        raise DatasetError(f"{where}: field {name!r} is missing (fields: {list(names)})")
    return record[name]


def numbers(value, where: str) -> np.ndarray:
    """Any numeric array (possibly wrapped in 1-element object arrays) -> flat float64."""
    v = value
    while isinstance(v, np.ndarray) and v.dtype == object:
        if v.size == 0:
            return np.zeros(0)
        if v.size != 1:
            raise DatasetError(f"{where}: expected numbers, got a cell of shape {v.shape}")
        v = v.reshape(-1)[0]
    try:
        return np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: expected numbers, got {type(v).__name__}") from None


def xywh(value, where: str, allow_empty: bool = False) -> np.ndarray | None:
    """A 1x4 [x, y, w, h] box; None for an empty one when allowed."""
    v = numbers(value, where)
    if v.size == 0 and allow_empty:
        return None
    if v.size != 4:
        raise DatasetError(f"{where}: a box must have 4 numbers (x, y, w, h), got shape "
                           f"{np.shape(value)} with {v.size} values")
    if not np.all(np.isfinite(v)):
        raise DatasetError(f"{where}: box {v.tolist()} is not finite")
    return v
