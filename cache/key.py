"""Fingerprints that key the cache: the same teachers + data + cache config -> the same file.

The key hashes the CONTENT of the teacher weights (never their path), a digest of the training
split (names, boxes, identities) and the cache/extraction settings; it leaves the student out.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.config.teacher import TeacherConfig, cache_key_settings
from pipeline.data import read_dataset

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


def cache_attrs(teacher_cfg: TeacherConfig, records) -> dict:
    """The key's parts, as the attributes the cache file carries: fingerprints of both teacher
    checkpoints' bytes, of the training split and of the settings that change the contents."""
    settings = json.dumps(cache_key_settings(teacher_cfg), sort_keys=True)
    return {"dataset": teacher_cfg.data.dataset,
            "split_fingerprint": split_fingerprint(records),
            "detector_fingerprint": file_fingerprint(teacher_cfg.checkpoint("detector")),
            "reid_fingerprint": file_fingerprint(teacher_cfg.checkpoint("reid")),
            "config_fingerprint": hashlib.sha256(settings.encode()).hexdigest(),
            "proposals_per_image": int(teacher_cfg.cache.proposals_per_image),
            "jitter_per_box": int(teacher_cfg.cache.jitter_per_box)}


def cache_path(teacher_cfg: TeacherConfig, records=None) -> Path:
    """The cache file of a teacher config: ``cache.dir / teacher-cache-<key>.h5``.

    FileNotFoundError (naming the missing file) when a teacher has not been trained yet.
    ``records``: the training split, when already read."""
    for part in ("detector", "reid"):
        ckpt = teacher_cfg.checkpoint(part)
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"teacher {part} checkpoint not found: {ckpt}; train it with "
                f"`python cli.py train-teacher --part {part} --config <teacher config>`")
    if records is None:
        records = read_dataset(teacher_cfg.data.dataset, teacher_cfg.data.root).train
    a = cache_attrs(teacher_cfg, records)
    return Path(teacher_cfg.cache.dir) / cache_file_name(
        a["detector_fingerprint"], a["reid_fingerprint"], a["split_fingerprint"],
        a["config_fingerprint"])
