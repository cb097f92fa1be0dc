"""Fingerprints that key the cache: the same teachers + data + cache config -> the same file.

The key hashes the CONTENT of the teacher weights (never their path), a digest of the training
split (names, boxes, identities) and the cache/extraction settings; it leaves the student out.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

KEY_LENGTH = 16
_CHUNK = 1 << 20


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (a teacher checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def split_fingerprint(records) -> str:
    """Digest of a split's image names, boxes and identities, in order."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(r.name.encode())
        digest.update(np.ascontiguousarray(r.boxes, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(r.pids, dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_file_name(detector_fp: str, reid_fp: str, split_fp: str, config_fp: str) -> str:
    text = "\n".join((detector_fp, reid_fp, split_fp, config_fp))
    return f"teacher-cache-{hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]}.h5"
