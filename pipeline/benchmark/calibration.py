"""Fitting and measuring a model's "same person" calibration on a dataset split
(:mod:`pipeline.runtime.calibration` holds the fit's arithmetic and its file; this module runs
the model): ``cli.py calibrate`` fits on the training split (identities the teacher cache
already knows) and measures the decision on the test split (identities it never saw)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.benchmark.run import _detect_all
from pipeline.data import read_dataset
from pipeline.runtime.calibration import (DEFAULT_THRESHOLD, Calibration, CalibrationError,
                                          fit_calibration, identity_pairs, write_calibration)
from pipeline.runtime.loading import load_model


def labeled_embeddings(model: str | Path, dataset: str, root: str | Path, split: str, *,
                       device: str = "cpu", batch_size: int = 2, progress: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(N, D) embeddings of the split's labeled ground-truth boxes, their (N,) identities and
    the weights' fingerprint."""
    data = read_dataset(dataset, root, train=split == "train")
    records = [r for r in data.split(split) if r.labeled.any()]
    searcher, info = load_model(model, device)
    with torch.no_grad():
        dets = _detect_all(searcher, records, device, batch_size, progress,
                           f"{split} boxes", lambda r: r.boxes[r.labeled])
    identities = np.concatenate([r.pids[r.labeled] for r in records]) if records else \
        np.zeros(0, np.int64)
    return dets.embeddings, identities, info.fingerprint


def pair_decisions(calibration: Calibration, embeddings: np.ndarray, identities: np.ndarray
                   ) -> dict:
    """Precision and recall of "likely the same person" over a split's identity pairs."""
    sims, same = identity_pairs(embeddings, identities)
    likely = calibration.probability(sims) >= calibration.threshold
    hits = int((likely & same).sum())
    return {"pairs_same": int(same.sum()), "pairs_different": int((~same).sum()),
            "precision": hits / max(int(likely.sum()), 1), "recall": hits / max(int(same.sum()), 1)}


def calibrate(model: str | Path, dataset: str, root: str | Path, *, device: str = "cpu",
              batch_size: int = 2, threshold: float = DEFAULT_THRESHOLD, measure: bool = True,
              progress: bool = True) -> tuple[Calibration, Path, dict | None]:
    """Fit on the training split, write ``<model>.calibration.json``; with ``measure``, the
    decision's precision / recall on the test split's pairs (None otherwise)."""
    emb, ids, fingerprint = labeled_embeddings(model, dataset, root, "train", device=device,
                                               batch_size=batch_size, progress=progress)
    if len(np.unique(ids)) < 2:
        raise CalibrationError(f"the training split of {root} has {len(np.unique(ids))} "
                               "labeled identities; a calibration needs at least 2")
    sims, same = identity_pairs(emb, ids)
    calibration = fit_calibration(sims, same, dataset=f"{dataset}:{root} (train)",
                                  fingerprint=fingerprint, threshold=threshold)
    path = write_calibration(model, calibration)
    held_out = None
    if measure:
        emb, ids, _ = labeled_embeddings(model, dataset, root, "test", device=device,
                                         batch_size=batch_size, progress=progress)
        held_out = pair_decisions(calibration, emb, ids)
    return calibration, path, held_out
