"""Reading the teacher cache: lazily, per process, one image at a time or whole tables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .schema import (EMBEDDING_ATTR, GROUPS, PER_VIEW, SCHEMA, SCHEMA_VERSION, SHARED, VIEWS,
                     entry_key)


class CacheMismatchError(ValueError):
    """The cache does not fit what a consumer needs; the message says what differs."""


@dataclass(frozen=True)
class CacheMeta:
    schema_version: int
    dataset: str
    split_fingerprint: str
    detector_fingerprint: str
    reid_fingerprint: str
    config_fingerprint: str
    created: str
    embedding_dim: int
    num_images: int
    proposals_per_image: int
    jitter_per_box: int
    has_flip: bool
    float16: bool
    num_proposals: int       # rows over all images
    num_jitter: int

    @property
    def has_proposals(self) -> bool:
        return self.num_proposals > 0

    @property
    def has_jitter(self) -> bool:
        return self.num_jitter > 0


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class TeacherCache:
    """A finalized teacher cache. Opens the file lazily and again in each forked worker."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"teacher cache not found: {self.path}")
        self._file = None
        self._pid = None
        f = self._h5()
        attrs = f.attrs
        if _text(attrs.get("schema", "")) != SCHEMA:
            raise CacheMismatchError(f"{self.path}: not a teacher cache (schema attribute "
                                     f"{attrs.get('schema')!r}; a .partial file is unfinished)")
        if int(attrs["schema_version"]) != SCHEMA_VERSION:
            raise CacheMismatchError(f"{self.path}: schema version {int(attrs['schema_version'])}"
                                     f", this code reads {SCHEMA_VERSION}: rebuild the cache")
        self.meta = CacheMeta(
            schema_version=int(attrs["schema_version"]), dataset=_text(attrs["dataset"]),
            split_fingerprint=_text(attrs["split_fingerprint"]),
            detector_fingerprint=_text(attrs["detector_fingerprint"]),
            reid_fingerprint=_text(attrs["reid_fingerprint"]),
            config_fingerprint=_text(attrs["config_fingerprint"]),
            created=_text(attrs["created"]), embedding_dim=int(attrs[EMBEDDING_ATTR]),
            num_images=int(attrs["num_images"]),
            proposals_per_image=int(attrs["proposals_per_image"]),
            jitter_per_box=int(attrs["jitter_per_box"]), has_flip=bool(attrs["has_flip"]),
            float16=bool(attrs["float16"]), num_proposals=int(f["proposals/boxes"].shape[0]),
            num_jitter=int(f["jitter/boxes"].shape[0]))
        self.names = [_text(n) for n in f["images/names"][:]]
        self.widths = f["images/width"][:]
        self.heights = f["images/height"][:]
        self._offsets = {g: f[f"{g}/offsets"][:] for g in GROUPS}
        self._index = {n: i for i, n in enumerate(self.names)}

    # ------------------------------------------------------------------ file handle
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # A handle inherited through fork is not safe to use: open our own.
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ reading
    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"image {name!r} is not in teacher cache {self.path}") from None

    def _rows(self, group: str, index: int) -> slice:
        o = self._offsets[group]
        return slice(int(o[index]), int(o[index + 1]))

    def image_targets(self, index, flipped: bool = False) -> dict[str, np.ndarray]:
        """Teacher targets of one image (keys: :data:`cache.schema.ENTRY_KEYS`); boxes in original
        pixels."""
        i = self.index_of(index) if isinstance(index, str) else int(index)
        view = "flip" if flipped else "orig"
        if flipped and not self.meta.has_flip:
            raise CacheMismatchError(f"{self.path} has no flipped-image view (cache.flip was off)")
        f = self._h5()
        out = {}
        for group in GROUPS:
            rows = self._rows(group, i)
            for name in SHARED[group]:
                out[entry_key(group, name)] = f[f"{group}/{name}"][rows]
            for name in PER_VIEW[group]:
                value = f[f"{group}/{view}/{name}"][rows]
                out[entry_key(group, name)] = value.astype(np.float32, copy=False)
        return out

    def raw_entry(self, index: int) -> dict:
        """One image in the writer's entry format (both views), for merging shards."""
        entry = self.image_targets(index, flipped=False)
        views = {"orig": {k: entry.pop(k) for k in list(entry) if _per_view_key(k)}}
        if self.meta.has_flip:
            flipped = self.image_targets(index, flipped=True)
            views["flip"] = {k: v for k, v in flipped.items() if _per_view_key(k)}
        entry["views"] = views
        return entry

    def identity_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pids (K,), L2-normalised mean teacher features (K,D), box counts (K,))."""
        f = self._h5()
        return (f["identities/pids"][:], f["identities/features"][:].astype(np.float32),
                f["identities/counts"][:])

    # ------------------------------------------------------------------ the contract
    def check_compatible(self, split_fingerprint: str, *, dataset: str, need_flip: bool = False,
                         need_proposals: bool = False, need_jitter: bool = False) -> None:
        m, problems = self.meta, []
        if m.dataset != dataset:
            problems.append(f"it was built for dataset {m.dataset!r}, not {dataset!r}")
        if m.split_fingerprint != split_fingerprint:
            problems.append("its training split fingerprint differs from the dataset's "
                            "(other images, boxes or identities)")
        if need_flip and not m.has_flip:
            problems.append("flipped-image features are needed (flips are on) but the cache "
                            "has none (build it with cache.flip: true)")
        if need_proposals and not m.has_proposals:
            problems.append("detector distillation needs teacher proposals but the cache has "
                            "none (cache.proposals_per_image > 0)")
        if need_jitter and not m.has_jitter:
            problems.append("the spatial-invariant term needs jittered boxes but the cache has "
                            "none (cache.jitter_per_box > 0)")
        if problems:
            raise CacheMismatchError(f"teacher cache {self.path} does not fit: "
                                     + "; ".join(problems))


def _per_view_key(key: str) -> bool:
    return any(key == entry_key(g, n) for g in GROUPS for n in PER_VIEW[g])
