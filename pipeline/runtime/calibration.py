"""A calibrated "same person" score: P(same person | cosine similarity), NumPy only.

``cli.py calibrate`` (:mod:`pipeline.benchmark.calibration`) embeds the ground-truth boxes of
a dataset's training split with a model, forms same-identity and different-identity pairs
and fits a 1-D logistic (Platt scaling) on their cosine similarity:
``P = 1 / (1 + exp(-(a * similarity + b)))``. The two classes are weighted equally (a
balanced prior), so P = 0.5 is the similarity where a pair is as likely the same person as
not; :data:`DEFAULT_THRESHOLD` is that point: above it a result is "likely the same person".

The fit is stored beside the model as ``<model>.calibration.json`` (a student checkpoint or a
teacher config: ``checkpoint_last.pt`` -> ``checkpoint_last.calibration.json``) with the
fingerprint of the weights it was fit on, so that searching (from a hit: no PyTorch) reads it
without loading the model, and a retrained checkpoint is not judged by an old fit.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.files import write_json_atomic
from pipeline.runtime.types import ModelInfo

DEFAULT_THRESHOLD = 0.5          # P(same person) at and above which a result is "likely"
CALIBRATION_SUFFIX = ".calibration.json"
NEWTON_STEPS = 100


class CalibrationError(UserError, ValueError):
    """A calibration cannot be fit (too few pairs) or its file is unreadable."""


@dataclass(frozen=True)
class Calibration:
    """``a``, ``b``: the logistic on cosine similarity; ``threshold``: the P that draws the
    line; ``fingerprint``: sha256 of the weights it was fit on."""

    a: float
    b: float
    threshold: float
    n_pos: int
    n_neg: int
    fitted: str                  # ISO date and time (UTC)
    dataset: str                 # e.g. "prw:work/data/synthetic-prw (train)"
    fingerprint: str

    def probability(self, similarity) -> np.ndarray:
        """P(same person) of each similarity (array in, array out)."""
        z = self.a * np.asarray(similarity, np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))

    @property
    def similarity_at_threshold(self) -> float:
        """The cosine similarity where P crosses ``threshold``."""
        return float((np.log(self.threshold / (1.0 - self.threshold)) - self.b) / self.a)

    def to_dict(self) -> dict:
        return {**asdict(self), "similarity_at_threshold": round(self.similarity_at_threshold, 6)}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(float(d["a"]), float(d["b"]), float(d["threshold"]), int(d["n_pos"]),
                   int(d["n_neg"]), str(d["fitted"]), str(d["dataset"]), str(d["fingerprint"]))


def fit_platt(similarity: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(a, b) of the logistic P(same | similarity), by Newton's method on the weighted log
    loss: the two classes weigh alike, and Platt's smoothed targets keep a separable set
    finite."""
    s, y = np.asarray(similarity, np.float64), np.asarray(same, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError(f"a calibration needs same-person and different-person pairs; "
                               f"got {n_pos} and {n_neg}")
    target = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    weight = np.where(y, 0.5 / n_pos, 0.5 / n_neg)
    x = np.stack([s, np.ones_like(s)], axis=1)
    theta = np.zeros(2)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -500.0, 500.0)))
        grad = x.T @ (weight * (p - target))
        hess = (x * (weight * p * (1.0 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def identity_pairs(embeddings: np.ndarray, identities: np.ndarray, negatives_per_positive: int = 4,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, same) of every same-identity pair of the unit-norm (N, D)
    ``embeddings`` and ``negatives_per_positive`` times as many random different-identity
    pairs (memory grows with the pairs, not with N squared)."""
    emb, ids = np.asarray(embeddings, np.float32), np.asarray(identities)
    groups = [np.flatnonzero(ids == i) for i in np.unique(ids)]
    pos = np.concatenate([np.zeros((0, 2), np.int64)] + [
        g[np.stack(np.triu_indices(len(g), k=1)).T] for g in groups], axis=0)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(2 * negatives_per_positive * max(len(pos), 1), 2))
    neg = draws[ids[draws[:, 0]] != ids[draws[:, 1]]][:negatives_per_positive * max(len(pos), 1)]
    pairs = np.concatenate([pos, neg]).astype(np.int64)
    sims = np.einsum("nd,nd->n", emb[pairs[:, 0]], emb[pairs[:, 1]])
    return sims, np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]


def fit_calibration(similarity: np.ndarray, same: np.ndarray, *, dataset: str,
                    fingerprint: str, threshold: float = DEFAULT_THRESHOLD) -> Calibration:
    a, b = fit_platt(similarity, same)
    if a <= 0:
        raise CalibrationError(f"the model does not separate the identities of {dataset}: "
                               "same-person pairs are not more similar than others")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Calibration(a, b, threshold, int(np.sum(same)), int(np.sum(~np.asarray(same))),
                       now, dataset, fingerprint)


def calibration_path(model: str | Path) -> Path:
    """Where a model's calibration lies: beside it, ``<stem>.calibration.json``."""
    return Path(model).with_suffix(CALIBRATION_SUFFIX)


def write_calibration(model: str | Path, calibration: Calibration) -> Path:
    return write_json_atomic(calibration_path(model), calibration.to_dict())


def read_calibration(model: ModelInfo, at: str | Path | None = None) -> tuple[Calibration | None, str]:
    """(the calibration of ``model``'s weights, or None; a one-line note why not). ``at``:
    the model's file when not at ``model.name`` (``--model``)."""
    path = calibration_path(at or model.name)
    if not path.is_file():
        return None, (f"the model is not calibrated (no {path.name}; run `python cli.py "
                      f"calibrate --model {at or model.name} ...`): no same-person line")
    try:
        calibration = Calibration.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{path} is unreadable ({e}): no same-person line"
    if calibration.fingerprint != model.fingerprint:
        return None, (f"{path.name} was fit on other weights than the gallery's model; "
                      "re-run `python cli.py calibrate`: no same-person line")
    return calibration, (f"likely the same person: P >= {calibration.threshold:g} "
                         f"(similarity >= {calibration.similarity_at_threshold:.3f}), fit on "
                         f"{calibration.dataset}")
