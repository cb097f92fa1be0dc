"""Export a trained student to one ONNX file that serves both of its modes.

The whole network is traced (torch.onnx's TorchScript exporter, which follows torchvision's
ONNX paths for the RPN's top-k, NMS and RoIAlign), so the file needs nothing but ONNX Runtime:

    inputs   image     (3, H, W) float32 in [0, 1], any H, W (the original frame)
             query_boxes (N, 4) float32 x1, y1, x2, y2 in original pixels; optional, default (0, 4)
             min_size  () float64, the resized shorter side; optional, default the model's
             max_size  () float64, the cap on the resized longer side; optional, default the model's
    outputs  boxes (K, 4) original pixels, scores (K,), embeddings (K, D) unit norm

Gallery mode (no query boxes, or zero): the detections of the image. Query mode (N > 0 boxes):
the given boxes, scores 1, and the boxes' embeddings. One ONNX ``If`` on N chooses the branch,
so each call runs only the network it needs; both branches share one copy of the weights.

The image is resized inside the graph exactly as PyTorch's transform does (the size computed in
float64, floor(side * scale), bilinear), so the two runtimes see the same pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from torch import Tensor

from pipeline.files import atomic_path
from pipeline.models.student import PersonSearchNet, load_student
from pipeline.runtime.onnx.graph import GRAPH_OUTPUTS, GalleryGraph, OnnxExportError, \
    QueryGraph, combine_modes, trace
from pipeline.runtime.onnx.quantize import calibration_feeds, calibration_images, quantize_int8
from pipeline.runtime.onnx.runtime import ONNX_FORMAT, OnnxSearcher

TRACE_SIZE = (192, 256)  # (H, W) of the example image the exporter traces with


def _example_image() -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, *TRACE_SIZE, generator=g)



def export_student(net: PersonSearchNet, out_path: str | Path, *,
                   proposals: int | None = None,
                   int8_calibration: list[Tensor] | None = None) -> Path:
    """Write ``net`` (eval mode is set here) as one ONNX file; -> its path. Atomic: a
    temporary file renamed into place, so an interrupted export leaves no half file.

    proposals: RPN proposals the RoI head scores per image (default: the model's; fixed in the
    file). int8_calibration: images (3,H,W) in [0,1] to calibrate int8 convolutions on; None
    keeps float32 (BENCHMARKS.md "Fast inference modes": what each costs in mAP)."""
    if not isinstance(net, PersonSearchNet):
        raise OnnxExportError(f"only the end-to-end student exports to ONNX, not "
                              f"{type(net).__name__}")
    net = net.cpu().eval()
    trained_proposals = net.proposals
    if proposals is not None:
        net.set_proposals(proposals)
    try:
        model = _export(net, int8_calibration)
    finally:
        net.set_proposals(trained_proposals)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"the exported graph does not validate: {e}") from None
    return _write_atomic(model, Path(out_path))


def _export(net: PersonSearchNet, int8_calibration) -> onnx.ModelProto:
    """Both modes traced (and quantized when asked), combined into one model."""
    min_size, max_size = net.input_size
    sizes = (torch.tensor(min_size, dtype=torch.float64),
             torch.tensor(max_size, dtype=torch.float64))
    image = _example_image()
    box = torch.tensor([[40.0, 30.0, 120.0, 180.0]])
    hw = {1: "H", 2: "W"}
    gallery = trace(GalleryGraph(net).eval(), (image, *sizes),
                     ("image", "min_size", "max_size"), GRAPH_OUTPUTS,
                     {"image": hw, "boxes": {0: "K"}, "scores": {0: "K"},
                      "embeddings": {0: "K"}})
    query = trace(QueryGraph(net).eval(), (image, box, *sizes),
                   ("image", "query_boxes", "min_size", "max_size"), ("embeddings",),
                   {"image": hw, "query_boxes": {0: "N"}, "embeddings": {0: "N"}})
    if int8_calibration:
        gallery_feeds, query_feeds = calibration_feeds(net, int8_calibration, sizes)
        gallery, query = quantize_int8(gallery, gallery_feeds), quantize_int8(query, query_feeds)
    dim = net.embedding_dim
    metadata = {"format": ONNX_FORMAT, "min_size": min_size, "max_size": max_size,
                "embedding_dim": dim, "model_args": json.dumps(net.model_args or {}),
                "proposals": net.proposals,
                "precision": "int8" if int8_calibration else "float32"}
    return combine_modes(gallery, query, min_size=min_size, max_size=max_size,
                         embedding_dim=dim, metadata=metadata)


def _write_atomic(model: onnx.ModelProto, path: Path) -> Path:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def export_checkpoint(checkpoint: str | Path, out_path: str | Path, *,
                      proposals: int | None = None, int8_folder: str | Path | None = None
                      ) -> Path:
    """The student of a training checkpoint (``RUN/checkpoint_last.pt``) as an ONNX file;
    int8 convolutions calibrated on images under ``int8_folder`` when given."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix in (".yaml", ".yml"):
        raise OnnxExportError(f"{checkpoint} is a teacher config: only the end-to-end student "
                              "exports to ONNX (the two-step teacher runs in PyTorch)")
    calibration = calibration_images(int8_folder) if int8_folder else None
    return export_student(load_student(checkpoint, "cpu"), out_path, proposals=proposals,
                          int8_calibration=calibration)


def onnx_searcher(checkpoint: str | Path, export_path: str | Path, *, device: str = "cpu",
                  threads: int | None = None) -> OnnxSearcher:
    """An ONNX Runtime searcher for ``checkpoint``: a .onnx file as it is, a training
    checkpoint exported to ``export_path`` first (every time: never a stale export)."""
    path = Path(checkpoint)
    if path.suffix != ".onnx":
        path = export_checkpoint(checkpoint, export_path)
    return OnnxSearcher(path, device=device, threads=threads)
