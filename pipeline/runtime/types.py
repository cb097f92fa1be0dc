"""The value types that cross module boundaries on the inference side. NumPy only (no torch),
so stores, ranking and scoring use them without loading a network.

- :class:`Detections`: people found in a sequence of images (or boxes given per query), grouped
  per image: group i is rows ``offsets[i]:offsets[i+1]`` of ``boxes`` (x1, y1, x2, y2 in the
  image's original pixels), ``scores`` and unit-norm ``embeddings``.
- :class:`RunSettings`: how a model runs when not as trained (input size, proposals, bf16).
- :class:`ModelInfo`: which model (and settings) made a set of embeddings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.arrays import to_numpy


@dataclass
class Detections:
    """Detections grouped per image (shapes in the module docstring)."""

    offsets: np.ndarray          # (N+1,) int64
    boxes: np.ndarray            # (T,4) float32
    scores: np.ndarray           # (T,) float32
    embeddings: np.ndarray       # (T,D) float32 (float16 where a file stores it so)

    def __post_init__(self):
        t = int(self.offsets[-1]) if len(self.offsets) else 0
        if len(self.offsets) == 0 or self.offsets[0] != 0:
            raise ValueError("detection offsets must start at 0")
        if self.boxes.shape != (t, 4) or self.scores.shape != (t,) or len(self.embeddings) != t:
            raise ValueError(f"detection columns do not hold the {t} rows the offsets say")

    @property
    def num_groups(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def group(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def group_of_row(self) -> np.ndarray:
        """(T,) the group (image) of every detection row."""
        return np.repeat(np.arange(self.num_groups), self.counts)

    @classmethod
    def empty(cls, dim: int, groups: int = 0) -> "Detections":
        return cls(np.zeros(groups + 1, np.int64), np.zeros((0, 4), np.float32),
                   np.zeros(0, np.float32), np.zeros((0, dim), np.float32))

    @classmethod
    def from_parts(cls, parts: list[tuple], dim: int) -> "Detections":
        """Per image (boxes (N,4), scores (N,), embeddings (N,D)) arrays or tensors."""
        boxes = [to_numpy(b, 4) for b, _, _ in parts]
        scores = [to_numpy(s).ravel() for _, s, _ in parts]
        embeddings = [to_numpy(e, dim) for _, _, e in parts]
        if not parts:
            return cls.empty(dim)
        return cls(np.r_[0, np.cumsum([len(s) for s in scores])].astype(np.int64),
                   np.concatenate(boxes), np.concatenate(scores), np.concatenate(embeddings))

    @classmethod
    def from_outputs(cls, outputs: list[dict], dim: int, min_score: float | None = None
                     ) -> "Detections":
        """A searcher's ``detect`` output (per image {"boxes", "scores", "embeddings"}), the
        detections scoring at least ``min_score`` when it is given."""
        parts = []
        for out in outputs:
            scores = to_numpy(out["scores"]).ravel()
            keep = scores >= min_score if min_score is not None else slice(None)
            parts.append((to_numpy(out["boxes"], 4)[keep], scores[keep],
                          to_numpy(out["embeddings"], dim)[keep]))
        return cls.from_parts(parts, dim)

    @classmethod
    def concatenate(cls, parts: list["Detections"], dim: int) -> "Detections":
        if not parts:
            return cls.empty(dim)
        counts = np.concatenate([p.counts for p in parts])
        return cls(np.r_[0, np.cumsum(counts)].astype(np.int64),
                   np.concatenate([p.boxes for p in parts]),
                   np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.embeddings for p in parts]))

    def select(self, groups) -> "Detections":
        """The given groups, in the given order."""
        groups = [int(g) for g in groups]
        rows = np.concatenate([np.arange(self.offsets[g], self.offsets[g + 1]) for g in groups]) \
            if groups else np.zeros(0, np.int64)
        counts = self.counts[groups] if groups else np.zeros(0, np.int64)
        return Detections(np.r_[0, np.cumsum(counts)].astype(np.int64), self.boxes[rows],
                          self.scores[rows], self.embeddings[rows])


@dataclass(frozen=True)
class RunSettings:
    """How a model runs when not as trained: frames resized so their shorter side is ``size``
    pixels, ``proposals`` RPN proposals scored per image, bf16 autocast on the CPU. None /
    False = as trained. A gallery records them with its model; every later run and query on it
    must use the same."""

    size: int | None = None
    proposals: int | None = None
    bf16: bool = False

    def __post_init__(self):
        if self.size is not None and self.size <= 0:
            raise ValueError(f"the input size must be positive, got {self.size}")
        if self.proposals is not None and self.proposals < 1:
            raise ValueError(f"proposals must be at least 1, got {self.proposals}")

    def describe(self) -> str:
        """"size=750 proposals=100 bf16" ("" = as trained), for messages."""
        parts = ([f"size={self.size}"] if self.size else []) + \
            ([f"proposals={self.proposals}"] if self.proposals else []) + \
            (["bf16"] if self.bf16 else [])
        return " ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSettings":
        size, proposals = d.get("size"), d.get("proposals")
        return cls(None if size is None else int(size),
                   None if proposals is None else int(proposals), bool(d.get("bf16", False)))

    @classmethod
    def from_text(cls, text: str) -> "RunSettings":
        """The form galleries of schema 1 stored: :meth:`describe`'s."""
        values = {}
        for part in text.split():
            key, _, value = part.partition("=")
            if key in ("size", "proposals") and value:
                values[key] = int(value)
            elif key == "bf16" and not value:
                values["bf16"] = True
            else:
                raise ValueError(f"unknown run setting {part!r} (expected size=N, proposals=N, "
                                 "bf16)")
        return cls(**values)


@dataclass(frozen=True)
class ModelInfo:
    """Which model made a set of embeddings, and how it ran."""

    kind: str                 # "student" or "teacher"
    name: str                 # what the user gave: a checkpoint or a teacher config path
    fingerprint: str          # sha256 of the weights' content
    settings: RunSettings = RunSettings()

    def describe(self) -> str:
        run = self.settings.describe()
        run = f", run with {run}" if run else ""
        return f"{self.kind} {self.name} (weights sha256 {self.fingerprint[:12]}{run})"

    def same_embeddings(self, other: "ModelInfo") -> bool:
        """Whether embeddings of the two can be compared: same weights, same settings."""
        return (self.fingerprint, self.settings) == (other.fingerprint, other.settings)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "fingerprint": self.fingerprint,
                "settings": self.settings.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        settings = d.get("settings") or {}
        settings = RunSettings.from_text(settings) if isinstance(settings, str) else \
            RunSettings.from_dict(settings)
        return cls(str(d["kind"]), str(d["name"]), str(d["fingerprint"]), settings)
