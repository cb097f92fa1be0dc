"""Run a :class:`~pipeline.models.searcher.Searcher` over a dataset's gallery and queries and
write the results file (:mod:`pipeline.gallery.results_file`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.images import load_image
from pipeline.data.records import PersonSearchData
from pipeline.gallery.results_file import write_results
from pipeline.inference.onnx_export import onnx_searcher
from pipeline.inference.searchers import load_searcher
from pipeline.models.precision import autocast
from pipeline.models.searcher import Searcher


RUNTIMES = ("torch", "onnx")


def _load_image(path: Path, device) -> torch.Tensor:
    """(3,H,W) float [0,1] at original size, on ``device``."""
    return load_image(path).to(device)


def results_from_model(source, model_kind: str, data: PersonSearchData, out_path, *,
                       device="cpu", batch_size: int = 2, progress: bool = True,
                       runtime: str = "torch") -> Path:
    """Load a searcher (a student checkpoint, or a teacher config with ``model_kind``
    "teacher") and write its results file over ``data``; bf16 on CUDA. ``runtime`` "onnx":
    the student in ONNX Runtime, a .pt checkpoint exported beside ``out_path`` (model.onnx)
    first, a .onnx file as it is."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "onnx":
        if model_kind != "student":
            raise RuntimeError("--runtime onnx runs the student only (the two-step teacher is "
                               "not exported)")
        searcher = onnx_searcher(source, Path(out_path).parent / "model.onnx", device=device)
        device = "cpu"   # frames reach ONNX Runtime as NumPy arrays, whatever its provider
    else:
        searcher = load_searcher(source, model_kind, device)
    return run_searcher(searcher, data, out_path, device=device, batch_size=batch_size,
                        amp=True, progress=progress)


def run_searcher(searcher: Searcher, data: PersonSearchData, out_path, *, device,
                 batch_size: int = 2, amp: bool = False, progress: bool = True) -> Path:
    """Detect in every gallery image, embed every query box, write the results file. ``amp``:
    bf16 autocast on CUDA."""
    boxes, scores, embs, counts = [], [], [], []
    gallery = data.gallery
    with torch.no_grad(), autocast(device, amp):
        for s in tqdm(range(0, len(gallery), batch_size), desc="gallery", disable=not progress):
            images = [_load_image(r.path, device) for r in gallery[s:s + batch_size]]
            for out in searcher.detect(images):
                boxes.append(out["boxes"].float().cpu().numpy().reshape(-1, 4))
                scores.append(out["scores"].float().cpu().numpy().ravel())
                embs.append(out["embeddings"].float().cpu().numpy())
                counts.append(len(boxes[-1]))
        paths = {r.name: r.path for r in (*data.gallery, *data.train)}
        q_embs = []
        queries = data.queries
        for s in tqdm(range(0, len(queries), batch_size), desc="queries", disable=not progress):
            batch = queries[s:s + batch_size]
            images = [_load_image(paths[q.image], device) for q in batch]
            qb = [torch.as_tensor(np.asarray(q.box, np.float32)[None], device=device) for q in batch]
            q_embs += [e.float().cpu().numpy() for e in searcher.embed_boxes(images, qb)]
    dim = next((e.shape[1] for e in embs + q_embs if e.ndim == 2 and e.shape[1]), 1)
    return write_results(
        out_path, data.dataset, [r.name for r in gallery], np.r_[0, np.cumsum(counts)],
        np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate([e.reshape(-1, dim) for e in embs]) if embs else np.zeros((0, dim)),
        [q.image for q in queries], np.array([q.box for q in queries]).reshape(-1, 4),
        np.concatenate(q_embs).reshape(-1, dim) if q_embs else np.zeros((0, dim)))
