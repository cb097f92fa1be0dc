"""Writing the teacher cache: append per image, flush in chunks, finalize atomically.

A build writes ``<final>.partial``. After every flushed chunk the attribute
``completed_images`` records how many images are whole; a restarted build opens the partial
file, cuts every array back to that point and continues. Only ``finalize`` renames the file
to its final name, so a crashed build never leaves a file that looks valid.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from .reader import TeacherCache
from .schema import (EMBEDDING_ATTR, GROUPS, PER_VIEW, REQUIRED_ATTRS, SCHEMA, SCHEMA_VERSION,
                     SHARED, VIEWS, entry_key, resolve_dtype, resolve_shape)

ROW_CHUNK = 4096           # HDF5 chunk length along rows
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
COMPLETED = "completed_images"
IDENTITY_ATTR = "images_digest"


def _chunk_rows(shape) -> int:
    """About ROW_CHUNK values per chunk, whatever the row width."""
    return max(64, ROW_CHUNK // int(np.prod(shape, dtype=np.int64)))


def partial_path(final_path: Path) -> Path:
    return final_path.with_name(final_path.name + ".partial")


def names_digest(names) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _columns(embedding_dim: int, has_flip: bool, float16: bool):
    """Every row dataset of the file: (path, trailing shape, dtype, group)."""
    views = VIEWS if has_flip else VIEWS[:1]
    for group in GROUPS:
        for name, (shape, dtype) in SHARED[group].items():
            yield f"{group}/{name}", resolve_shape(shape, embedding_dim), \
                resolve_dtype(dtype, float16), group, None, name
        for view in views:
            for name, (shape, dtype) in PER_VIEW[group].items():
                yield f"{group}/{view}/{name}", resolve_shape(shape, embedding_dim), \
                    resolve_dtype(dtype, float16), group, view, name


class CacheWriter:
    """Append per-image teacher outputs, in the order of ``names``; resumable."""

    def __init__(self, final_path, *, names, widths, heights, embedding_dim: int, attrs: dict,
                 has_flip: bool, float16: bool = False, flush_every: int = 16):
        missing = [k for k in REQUIRED_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"cache attributes missing: {missing}")
        self.final_path = Path(final_path)
        self.path = partial_path(self.final_path)
        self.names = list(names)
        self.embedding_dim = int(embedding_dim)
        self.has_flip = bool(has_flip)
        self.float16 = bool(float16)
        self.flush_every = max(1, int(flush_every))
        self.attrs = dict(attrs)
        self.columns = list(_columns(self.embedding_dim, self.has_flip, self.float16))
        self._buffer: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._try_resume():
            self._create(np.asarray(widths), np.asarray(heights))

    # ------------------------------------------------------------------ opening
    def _identity(self) -> dict:
        return {IDENTITY_ATTR: names_digest(self.names), EMBEDDING_ATTR: self.embedding_dim,
                "has_flip": self.has_flip, "float16": self.float16,
                **{k: self.attrs[k] for k in REQUIRED_ATTRS}}

    def _try_resume(self) -> bool:
        if not self.path.exists():
            return False
        try:
            f = h5py.File(self.path, "a")
        except OSError:  # unreadable leftover (killed while creating): start over
            self.path.unlink()
            return False
        same = all(f.attrs.get(k) == v for k, v in self._identity().items())
        if not same:
            f.close()
            self.path.unlink()
            return False
        self.file = f
        self._truncate_to(int(f.attrs[COMPLETED]))
        return True

    def _create(self, widths: np.ndarray, heights: np.ndarray) -> None:
        if len(widths) != len(self.names) or len(heights) != len(self.names):
            raise ValueError("names, widths and heights differ in length")
        f = self.file = h5py.File(self.path, "w")
        f.create_dataset("images/names", data=np.array(self.names, dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("images/width", data=widths.astype(np.int32))
        f.create_dataset("images/height", data=heights.astype(np.int32))
        for group in GROUPS:
            f.create_dataset(f"{group}/offsets", shape=(1,), maxshape=(None,), dtype="int64",
                             data=np.zeros(1, np.int64), chunks=(ROW_CHUNK,))
        for path, shape, dtype, *_ in self.columns:
            f.create_dataset(path, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                             chunks=(_chunk_rows(shape), *shape), **COMPRESSION)
        for k, v in self._identity().items():
            f.attrs[k] = v
        f.attrs[COMPLETED] = 0
        f.flush()

    def _truncate_to(self, images: int) -> None:
        """Cut rows written after the last whole flush (a crash mid-chunk)."""
        f = self.file
        for group in GROUPS:
            offsets = f[f"{group}/offsets"]
            offsets.resize((images + 1,))
            rows = int(offsets[images])
            for path, _, _, g, *_ in self.columns:
                if g == group:
                    f[path].resize(rows, axis=0)

    @property
    def completed(self) -> int:
        return int(self.file.attrs[COMPLETED]) + len(self._buffer)

    # ------------------------------------------------------------------ writing
    def _rows(self, entry: dict, group: str, view: str | None, name: str, shape, dtype):
        key = entry_key(group, name)
        source = entry if view is None else entry["views"][view]
        if key not in source:
            if group != "gt" and len(entry.get(f"{entry_key(group, 'boxes')}", ())) == 0:
                return np.zeros((0, *shape), dtype)
            raise KeyError(f"cache entry lacks {key!r}" + (f" in view {view!r}" if view else ""))
        value = np.asarray(source[key])
        if value.size == 0:
            value = value.reshape(0, *shape)
        if value.shape[1:] != tuple(shape):
            raise ValueError(f"cache entry {key}: shape {value.shape}, expected (rows, {shape})")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"cache entry {key} holds non-finite values")
        return value.astype(dtype, copy=False)

    def append(self, entry: dict) -> None:
        if self.completed >= len(self.names):
            raise IndexError("all images are written already")
        rows = {}
        for path, shape, dtype, group, view, name in self.columns:
            rows[path] = self._rows(entry, group, view, name, shape, dtype)
        for group in GROUPS:
            counts = {len(v) for p, v in rows.items() if p.startswith(group + "/")}
            if len(counts) != 1:
                raise ValueError(f"cache entry: {group} arrays differ in row count {sorted(counts)}")
        self._buffer.append(rows)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        f = self.file
        for group in GROUPS:
            offsets = f[f"{group}/offsets"]
            first = len(offsets)
            counts = [len(next(v for p, v in rows.items() if p.startswith(group + "/")))
                      for rows in self._buffer]
            new = int(offsets[first - 1]) + np.cumsum(counts)
            offsets.resize((first + len(counts),))
            offsets[first:] = new
        for path, *_ in self.columns:
            data = np.concatenate([rows[path] for rows in self._buffer])
            ds = f[path]
            start = ds.shape[0]
            ds.resize(start + len(data), axis=0)
            ds[start:] = data
        # Only now the images count as whole: a crash before this line is cut on resume.
        f.attrs[COMPLETED] = int(f.attrs[COMPLETED]) + len(self._buffer)
        f.flush()
        self._buffer = []

    # ------------------------------------------------------------------ finishing
    def _identity_table(self):
        pids = self.file["gt/pids"][:]
        feats = self.file["gt/orig/features"][:].astype(np.float64)
        labeled = pids >= 0
        ids, inverse, counts = np.unique(pids[labeled], return_inverse=True, return_counts=True)
        sums = np.zeros((len(ids), self.embedding_dim))
        np.add.at(sums, inverse, feats[labeled])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        table = sums / np.maximum(norms, 1e-12)
        return ids.astype(np.int64), table.astype(np.float32), counts.astype(np.int64)

    def finalize(self) -> Path:
        self.flush()
        done = int(self.file.attrs[COMPLETED])
        if done != len(self.names):
            raise RuntimeError(f"cannot finalize: {done} of {len(self.names)} images written")
        f = self.file
        pids, table, counts = self._identity_table()
        f.create_dataset("identities/pids", data=pids)
        f.create_dataset("identities/features", data=table)
        f.create_dataset("identities/counts", data=counts)
        for k, v in self.attrs.items():
            f.attrs[k] = v
        f.attrs.update({"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                        "num_images": len(self.names)})
        f.close()
        os.replace(self.path, self.final_path)  # atomic on one file system
        return self.final_path

    def close(self) -> None:
        """Flush and close without finalizing; a later writer resumes."""
        if getattr(self, "file", None) is not None and self.file.id.valid:
            self.flush()
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def merge_shards(final_path, shard_paths, *, names, widths, heights, embedding_dim, attrs,
                 has_flip, float16=False) -> Path:
    """One cache over ``names`` from finalized shard caches over subsets of them."""
    shards = [TeacherCache(p) for p in shard_paths]
    where = {}
    for shard in shards:
        for i, name in enumerate(shard.names):
            where[name] = (shard, i)
    missing = [n for n in names if n not in where]
    if missing:
        raise ValueError(f"shards lack {len(missing)} images, e.g. {missing[:3]}")
    writer = CacheWriter(final_path, names=names, widths=widths, heights=heights,
                         embedding_dim=embedding_dim, attrs=attrs, has_flip=has_flip,
                         float16=float16, flush_every=64)
    for name in names[writer.completed:]:
        shard, i = where[name]
        writer.append(shard.raw_entry(i))
    path = writer.finalize()
    for shard in shards:
        shard.close()
    return path
