"""Run a :class:`~pipeline.models.searcher.Searcher` over a dataset's gallery and queries and
write the results file (:mod:`pipeline.gallery.results_file`; schema 2, with each query image's
detections as the CBGM context group)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.images import load_image
from pipeline.data.published_boxes import PUBLISHED, choose
from pipeline.data.records import PersonSearchData
from pipeline.gallery.results_file import write_results
from pipeline.errors import UserError
from pipeline.inference.onnx_export import onnx_searcher
from pipeline.inference.onnx_runtime import RUNTIMES
from pipeline.inference.searchers import load_searcher
from pipeline.models.precision import autocast
from pipeline.models.searcher import Searcher


class RuntimeChoiceError(UserError, ValueError):
    """A model cannot run in the runtime asked for."""


def _load_image(path: Path, device) -> torch.Tensor:
    """(3,H,W) float [0,1] at original size, on ``device``."""
    return load_image(path).to(device)


def results_from_model(source, model_kind: str, data: PersonSearchData, out_path, *,
                       device="cpu", batch_size: int = 2, progress: bool = True,
                       runtime: str = "torch", boxes: str = PUBLISHED) -> Path:
    """Load a searcher (a student checkpoint, or a teacher config with ``model_kind``
    "teacher") and write its results file over ``data``; bf16 on CUDA. ``runtime`` "onnx":
    the student in ONNX Runtime, a .pt checkpoint exported beside ``out_path`` (model.onnx)
    first, a .onnx file as it is. ``boxes``: the query boxes' convention
    (pipeline/data/published_boxes.py)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "onnx":
        if model_kind != "student":
            raise RuntimeChoiceError("--runtime onnx runs the student only (the two-step teacher is "
                               "not exported)")
        searcher = onnx_searcher(source, Path(out_path).parent / "model.onnx", device=device)
        device = "cpu"   # frames reach ONNX Runtime as NumPy arrays, whatever its provider
    else:
        searcher = load_searcher(source, model_kind, device)
    return run_searcher(searcher, data, out_path, device=device, batch_size=batch_size,
                        amp=True, progress=progress, boxes=boxes)


def run_searcher(searcher: Searcher, data: PersonSearchData, out_path, *, device,
                 batch_size: int = 2, amp: bool = False, progress: bool = True,
                 boxes: str = PUBLISHED) -> Path:
    """Detect in every gallery image, embed every query box (whole pixels unless ``boxes`` is
    "exact", as the published numbers embed them), keep each query image's detections (its
    gallery ones; one extra detection pass for a query image outside the gallery), write the
    results file. ``amp``: bf16 autocast on CUDA."""
    gallery = data.gallery
    paths = {r.name: r.path for r in (*data.gallery, *data.train)}
    with torch.no_grad(), autocast(device, amp):
        dets = _detect_all(searcher, [r.path for r in gallery], device, batch_size, progress,
                           "gallery")
        found = {r.name: i for i, r in enumerate(gallery)}
        outside = sorted({q.image for q in data.queries} - set(found))
        extra = _detect_all(searcher, [paths[n] for n in outside], device, batch_size, progress,
                            "query images")
        q_embs = []
        queries = data.queries
        for s in tqdm(range(0, len(queries), batch_size), desc="queries", disable=not progress):
            batch = queries[s:s + batch_size]
            images = [_load_image(paths[q.image], device) for q in batch]
            qb = [torch.as_tensor(choose(q.box, q.published_box, data.dataset, boxes)[None],
                                  dtype=torch.float32, device=device) for q in batch]
            q_embs += [e.float().cpu().numpy() for e in searcher.embed_boxes(images, qb)]
    dim = next((e.shape[1] for _, _, e in dets + extra if e.ndim == 2 and e.shape[1]), None) \
        or next((e.shape[1] for e in q_embs if e.ndim == 2 and e.shape[1]), 1)
    outside_index = {n: i for i, n in enumerate(outside)}
    context = [dets[found[q.image]] if q.image in found else extra[outside_index[q.image]]
               for q in queries]
    return write_results(
        out_path, data.dataset, [r.name for r in gallery], *_stack(dets, dim),
        [q.image for q in queries], np.array([q.box for q in queries]).reshape(-1, 4),
        np.concatenate(q_embs).reshape(-1, dim) if q_embs else np.zeros((0, dim)),
        context=_stack(context, dim))


def _detect_all(searcher, paths: list, device, batch_size: int, progress: bool, desc: str):
    """[(boxes (N,4), scores (N,), embeddings (N,D)) numpy] per image, in order."""
    out = []
    for s in tqdm(range(0, len(paths), batch_size), desc=desc, disable=not progress or not paths):
        images = [_load_image(p, device) for p in paths[s:s + batch_size]]
        for det in searcher.detect(images):
            out.append((det["boxes"].float().cpu().numpy().reshape(-1, 4),
                        det["scores"].float().cpu().numpy().ravel(),
                        det["embeddings"].float().cpu().numpy()))
    return out


def _stack(dets: list, dim: int) -> tuple:
    """Per-image detections -> (offsets, boxes, scores, embeddings) of the results file."""
    counts = [len(b) for b, _, _ in dets]
    return (np.r_[0, np.cumsum(counts)].astype(np.int64),
            np.concatenate([b for b, _, _ in dets]) if dets else np.zeros((0, 4)),
            np.concatenate([s for _, s, _ in dets]) if dets else np.zeros(0),
            np.concatenate([e.reshape(-1, dim) for _, _, e in dets]) if dets
            else np.zeros((0, dim)))
