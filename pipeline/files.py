"""The one atomic write: a file is written beside its final name under a unique temporary name,
flushed to disk (fsync) and moved into place with ``os.replace``, so a reader (or a run killed
at any instant, ``kill -9`` included) finds the old file or the whole new one, never half of
it. Temporary names start with "." and end with ".tmp" so stores can sweep leftovers
(:data:`TEMP_GLOB`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

TEMP_GLOB = ".*.tmp"          # what a killed writer leaves behind, for a store's tidy-up


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for any writer (h5py, FAISS, torch.save, PIL,
    matplotlib: keep the temporary's suffix in mind, it ends with ``.tmp``); when the block
    ends without an exception the file is synced and moved to ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data, indent: int = 1) -> Path:
    """JSON as the standard says it: NaN and infinity are refused (ValueError), not written."""
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def link_or_copy(src: str | Path, dst: str | Path) -> Path:
    """``dst`` (replaced when it exists) as a hard link to the file ``src`` when both are on
    one file system, else as an atomic copy of it. Safe with writers that replace ``src`` by an
    atomic rename later (checkpoints): that gives ``src`` a new inode and leaves ``dst`` as it was."""
    Path(dst).unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return Path(dst)
