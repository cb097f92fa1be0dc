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

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torchvision.ops import box_iou

from pipeline.data.images import load_image
from pipeline.errors import UserError
from pipeline.runtime.onnx.runtime import ONNX_FORMAT, OnnxSearcher
from pipeline.runtime.settings import proposal_count, set_proposals
from pipeline.models.student import PersonSearchNet, load_student
from pipeline.models.transform import PersonSearchTransform, resize_boxes

ONNX_OPSET = 17
GRAPH_INPUTS = ("image", "query_boxes", "min_size", "max_size")
GRAPH_OUTPUTS = ("boxes", "scores", "embeddings")
TRACE_SIZE = (192, 256)  # (H, W) of the example image the exporter traces with
AGREEMENT_IOU = 0.99      # matched boxes, ONNX Runtime vs PyTorch, at least this IoU
AGREEMENT_COSINE = 0.999  # and their embeddings at least this cosine


class OnnxExportError(UserError, RuntimeError):
    """The model cannot be exported, or the exported graph is malformed."""


# ------------------------------------------------------------------ what gets traced

class TracedSizeTransform(PersonSearchTransform):
    """The student's transform with the resize limits as tensors (graph inputs).

    Same arithmetic as torchvision's eager resize: scale = min(min_size / shorter,
    max_size / longer) in float64, new side = floor(side * scale), bilinear without corner
    alignment; every ``*boxes`` target key follows the image."""

    def __init__(self, base: PersonSearchTransform, min_size: Tensor, max_size: Tensor):
        super().__init__(base.min_size, base.max_size, base.image_mean, base.image_std,
                         size_divisible=base.size_divisible)
        self.min_size_t, self.max_size_t = min_size, max_size

    def resize(self, image: Tensor, target=None):
        shape = torch._shape_as_tensor(image)[-2:]
        side = shape.to(torch.float64)
        # (2,) vectors, not 0-d tensors: the exporter computes 0-d divisions in float32, whose
        # rounding moves floor(side * scale) by a pixel (270 * float32(128 / 270) < 128)
        limits = torch.cat([self.min_size_t.reshape(1), self.max_size_t.reshape(1)])
        scale = (limits / torch.sort(side).values).min(dim=0, keepdim=True).values
        new = torch.floor(side * scale).to(torch.int64)
        image = F.interpolate(image[None], size=(new[0], new[1]), mode="bilinear",
                              align_corners=False)[0]
        if target is not None:
            for key, value in list(target.items()):
                if key.endswith("boxes") and isinstance(value, Tensor):
                    target[key] = resize_boxes(value.float().reshape(-1, 4), [shape[0], shape[1]],
                                               [new[0], new[1]])
        return image, target


class _Mode(nn.Module):
    """One mode of the student with the resize limits as inputs; the student is shared."""

    def __init__(self, net: PersonSearchNet):
        super().__init__()
        self.net = net
        self.base_transform = net.transform

    def _use_sizes(self, min_size: Tensor, max_size: Tensor) -> None:
        self.net.transform = TracedSizeTransform(self.base_transform, min_size, max_size)


class GalleryGraph(_Mode):
    """image (3,H,W) -> boxes (K,4) original pixels, scores (K,), embeddings (K,D)."""

    def forward(self, image: Tensor, min_size: Tensor, max_size: Tensor):
        self._use_sizes(min_size, max_size)
        out = self.net.detect([image])[0]
        return out["boxes"], out["scores"], out["embeddings"]


class QueryGraph(_Mode):
    """image (3,H,W), boxes (N,4) original pixels -> embeddings (N,D)."""

    def forward(self, image: Tensor, boxes: Tensor, min_size: Tensor, max_size: Tensor):
        self._use_sizes(min_size, max_size)
        return self.net.embed_boxes([image], [boxes])[0]


def _trace(module: _Mode, args: tuple, input_names, output_names, dynamic) -> onnx.ModelProto:
    """torch.onnx (TorchScript exporter) -> ModelProto; the student's own transform restored."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shapes turned into graph ops
        path = Path(tmp) / "graph.onnx"
        try:
            with torch.no_grad():
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=list(input_names), output_names=list(output_names),
                                  dynamic_axes=dynamic, do_constant_folding=True)
        finally:
            module.net.transform = module.base_transform
        return onnx.load(str(path))


# ------------------------------------------------------------------ two graphs -> one If

def _rename_graph(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    """Prefix every value and node name of ``graph`` (and its subgraphs) except ``keep``
    (the outer inputs and the shared weights), so the two branches cannot clash."""
    name = lambda n: n if (not n or n in keep) else prefix + n
    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _rename_graph(sub, prefix, keep)
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = name(value.name)
    for init in graph.initializer:
        init.name = name(init.name)


def _hoist_weights(graph: onnx.GraphProto, weights: dict[str, onnx.TensorProto],
                   by_content: dict[bytes, str]) -> None:
    """Move the graph's initializers out (into ``weights``), one copy per distinct content."""
    renames = {}
    for init in graph.initializer:
        key = hashlib.sha256(init.data_type.to_bytes(4, "little")
                             + np.asarray(init.dims, np.int64).tobytes()
                             + numpy_helper.to_array(init).tobytes()).digest()
        if key not in by_content:
            by_content[key] = f"weights/{len(by_content)}"
            tensor = onnx.TensorProto()
            tensor.CopyFrom(init)
            tensor.name = by_content[key]
            weights[tensor.name] = tensor
        renames[init.name] = by_content[key]
    del graph.initializer[:]
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]


def _branch(model: onnx.ModelProto, prefix: str, outer: set[str], weights, by_content,
            extra_nodes=(), outputs=None) -> onnx.GraphProto:
    """A traced graph as an If branch: no inputs (it reads the outer scope), its own names."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    graph.name = prefix.rstrip("/")
    _hoist_weights(graph, weights, by_content)
    _rename_graph(graph, prefix, outer | set(weights))
    del graph.input[:]
    graph.node.extend(extra_nodes)
    if outputs is not None:
        del graph.output[:]
        graph.output.extend(outputs)
    return graph


def _query_extras(query: onnx.ModelProto, dim) -> tuple[list, list]:
    """Nodes that make the query branch answer like the gallery one: the given boxes and
    scores of 1 beside the embeddings."""
    emb = "query/" + query.graph.output[0].name
    nodes = [helper.make_node("Identity", ["query_boxes"], ["query/boxes_out"]),
             helper.make_node("Shape", ["query_boxes"], ["query/n"], start=0, end=1),
             helper.make_node("ConstantOfShape", ["query/n"], ["query/scores_out"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Identity", [emb], ["query/embeddings_out"])]
    outputs = [helper.make_tensor_value_info("query/boxes_out", TensorProto.FLOAT, ["N", 4]),
               helper.make_tensor_value_info("query/scores_out", TensorProto.FLOAT, ["N"]),
               helper.make_tensor_value_info("query/embeddings_out", TensorProto.FLOAT,
                                             ["N", dim])]
    return nodes, outputs


def combine_modes(gallery: onnx.ModelProto, query: onnx.ModelProto, *, min_size: float,
                  max_size: float, embedding_dim: int, metadata: dict) -> onnx.ModelProto:
    """One model: ``If`` (number of boxes == 0) then the gallery graph else the query graph."""
    outer = set(GRAPH_INPUTS)
    weights, by_content = {}, {}
    then_graph = _branch(gallery, "gallery/", outer, weights, by_content)
    nodes, outputs = _query_extras(query, embedding_dim)
    else_graph = _branch(query, "query/", outer, weights, by_content, nodes, outputs)
    main_nodes = [
        helper.make_node("Shape", ["query_boxes"], ["num_boxes"], start=0, end=1),
        helper.make_node("ReduceMax", ["num_boxes"], ["num_boxes_scalar"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
            np.array(0, np.int64))),
        helper.make_node("Equal", ["num_boxes_scalar", "zero"], ["gallery_mode"]),
        helper.make_node("If", ["gallery_mode"], list(GRAPH_OUTPUTS),
                         then_branch=then_graph, else_branch=else_graph),
    ]
    defaults = [numpy_helper.from_array(np.zeros((0, 4), np.float32), "query_boxes"),
                numpy_helper.from_array(np.array(min_size, np.float64), "min_size"),
                numpy_helper.from_array(np.array(max_size, np.float64), "max_size")]
    graph = helper.make_graph(
        main_nodes, "person_search_student",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "H", "W"]),
                helper.make_tensor_value_info("query_boxes", TensorProto.FLOAT, ["N", 4]),
                helper.make_tensor_value_info("min_size", TensorProto.DOUBLE, []),
                helper.make_tensor_value_info("max_size", TensorProto.DOUBLE, [])],
        outputs=[helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["K", 4]),
                 helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["K"]),
                 helper.make_tensor_value_info("embeddings", TensorProto.FLOAT,
                                               ["K", embedding_dim])],
        initializer=defaults + list(weights.values()))
    model = helper.make_model(graph, opset_imports=list(gallery.opset_import),
                              producer_name="person-search", doc_string=__doc__)
    model.ir_version = gallery.ir_version
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    return model


# ------------------------------------------------------------------ entry point

def _example_image() -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, *TRACE_SIZE, generator=g)


def _calibration_feeds(net: PersonSearchNet, images: list[Tensor], sizes) -> tuple[list, list]:
    """Inputs of the gallery graph and of the query graph for int8 calibration: the images,
    and for queries the student's own detections in them (realistic RoIs)."""
    sizes = {"min_size": sizes[0].numpy(), "max_size": sizes[1].numpy()}
    gallery, query = [], []
    with torch.no_grad():
        for image in images:
            gallery.append({"image": image.numpy(), **sizes})
            boxes = net.detect([image])[0]["boxes"][:32]
            if len(boxes):
                query.append({"image": image.numpy(), "query_boxes": boxes.numpy(), **sizes})
    return gallery, query or [{"image": images[0].numpy(), "query_boxes": np.array(
        [[0, 0, images[0].shape[-1] / 2, images[0].shape[-2]]], np.float32), **sizes}]


def quantize_int8(model: onnx.ModelProto, feeds: list[dict]) -> onnx.ModelProto:
    """Static int8 quantization of the convolutions (QDQ, per-channel weights, activation
    ranges from ``feeds``); boxes, NMS and the embedding's last layers stay float32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, \
        quantize_static  # onnxruntime's quantization tools load only when asked for

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        root.setLevel(logging.ERROR)  # the tool logs advice on optimising first: BN is folded
        try:
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, op_types_to_quantize=["Conv"],
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return onnx.load(str(dst))


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
    trained_proposals = net.rpn._post_nms_top_n["testing"]
    if proposals is not None:
        set_proposals(net, proposals)
    try:
        model = _export(net, int8_calibration)
    finally:
        set_proposals(net, trained_proposals)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"the exported graph does not validate: {e}") from None
    return _write_atomic(model, Path(out_path))


def _export(net: PersonSearchNet, int8_calibration) -> onnx.ModelProto:
    """Both modes traced (and quantized when asked), combined into one model."""
    min_size, max_size = float(net.transform.min_size[-1]), float(net.transform.max_size)
    sizes = (torch.tensor(min_size, dtype=torch.float64),
             torch.tensor(max_size, dtype=torch.float64))
    image = _example_image()
    box = torch.tensor([[40.0, 30.0, 120.0, 180.0]])
    hw = {1: "H", 2: "W"}
    gallery = _trace(GalleryGraph(net).eval(), (image, *sizes),
                     ("image", "min_size", "max_size"), GRAPH_OUTPUTS,
                     {"image": hw, "boxes": {0: "K"}, "scores": {0: "K"},
                      "embeddings": {0: "K"}})
    query = _trace(QueryGraph(net).eval(), (image, box, *sizes),
                   ("image", "query_boxes", "min_size", "max_size"), ("embeddings",),
                   {"image": hw, "query_boxes": {0: "N"}, "embeddings": {0: "N"}})
    if int8_calibration:
        gallery_feeds, query_feeds = _calibration_feeds(net, int8_calibration, sizes)
        gallery, query = quantize_int8(gallery, gallery_feeds), quantize_int8(query, query_feeds)
    dim = int(net.roi_heads.reid_head.dim)
    metadata = {"format": ONNX_FORMAT, "min_size": min_size, "max_size": max_size,
                "embedding_dim": dim, "model_args": json.dumps(net.model_args or {}),
                "proposals": proposal_count(net),
                "precision": "int8" if int8_calibration else "float32"}
    return combine_modes(gallery, query, min_size=min_size, max_size=max_size,
                         embedding_dim=dim, metadata=metadata)


def _write_atomic(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def calibration_images(folder: str | Path, count: int = 16) -> list[Tensor]:
    """Up to ``count`` images spread evenly over the sorted image files under ``folder``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OnnxExportError(f"no images (.jpg, .jpeg, .png) under {folder} to calibrate int8 on")
    picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).astype(int))
    return [load_image(files[i]) for i in picks]


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


# ------------------------------------------------------------------ agreement with PyTorch

def _match(ref_boxes: Tensor, got_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy one-to-one matching by IoU, best pairs first: ((P,2) rows [ref, got], (P,) IoU)."""
    iou = box_iou(ref_boxes, got_boxes) if len(ref_boxes) and len(got_boxes) else \
        torch.zeros(len(ref_boxes), len(got_boxes))
    pairs = []
    while iou.numel() and iou.max() > 0:
        k = int(iou.argmax())
        i, j = divmod(k, iou.shape[1])
        pairs.append((i, j, float(iou[i, j])))
        iou[i, :], iou[:, j] = -1, -1
    rows = torch.tensor([[i, j] for i, j, _ in pairs], dtype=torch.int64).reshape(-1, 2)
    return rows, torch.tensor([v for _, _, v in pairs])


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine; 1 where both rows are zero (a box whose RoI samples all fall outside
    the feature map embeds to zero in both runtimes: they agree)."""
    both_zero = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    return torch.where(both_zero, torch.ones_like(a[:, 0]), F.cosine_similarity(a, b, dim=1))


def agreement(net: PersonSearchNet, searcher: OnnxSearcher, images: list[Tensor],
              query_boxes: list[Tensor]) -> dict:
    """How closely ``searcher`` (ONNX Runtime) reproduces ``net`` (PyTorch) on ``images``:
    detections per image in each, the smallest IoU of one-to-one matched boxes, the smallest
    cosine of their embeddings, the largest score difference, and the smallest cosine of the
    query-mode embeddings of ``query_boxes``. Unmatched detections count as IoU 0.

    PyTorch runs one image at a time as ONNX Runtime does: a batch pads every image to the
    largest, which changes the features near the right and bottom edges."""
    net = net.eval()
    out = {"torch_counts": [], "onnx_counts": [], "min_iou": 1.0, "min_cosine": 1.0,
           "max_score_diff": 0.0, "min_query_cosine": 1.0}
    with torch.no_grad():
        refs = [net.detect([image])[0] for image in images]
        ref_queries = [net.embed_boxes([image], [b])[0] for image, b in zip(images, query_boxes)]
    for image, ref, qb, ref_q in zip(images, refs, query_boxes, ref_queries):
        got = searcher.detect([image])[0]
        out["torch_counts"].append(len(ref["boxes"]))
        out["onnx_counts"].append(len(got["boxes"]))
        rows, ious = _match(ref["boxes"], got["boxes"])
        if len(rows) < max(len(ref["boxes"]), len(got["boxes"])):
            out["min_iou"] = 0.0
        if len(rows):
            i, j = rows[:, 0], rows[:, 1]
            cos = _cosine(ref["embeddings"][i], got["embeddings"][j])
            out["min_iou"] = min(out["min_iou"], float(ious.min()))
            out["min_cosine"] = min(out["min_cosine"], float(cos.min()))
            out["max_score_diff"] = max(out["max_score_diff"],
                                        float((ref["scores"][i] - got["scores"][j]).abs().max()))
        if len(qb):
            got_q = searcher.embed_boxes([image], [qb])[0]
            out["min_query_cosine"] = min(out["min_query_cosine"],
                                          float(_cosine(ref_q, got_q).min()))
    return out


def agrees(report: dict) -> bool:
    """Same detection counts, matched boxes and embeddings within the agreement limits."""
    return (report["torch_counts"] == report["onnx_counts"]
            and report["min_iou"] >= AGREEMENT_IOU and report["min_cosine"] >= AGREEMENT_COSINE
            and report["min_query_cosine"] >= AGREEMENT_COSINE)


def verify_export(checkpoint: str | Path, onnx_path: str | Path) -> str:
    """Run one random frame at the model's input size through both runtimes; -> a one-line
    summary, or OnnxExportError when they disagree."""
    searcher = OnnxSearcher(onnx_path)
    net = set_proposals(load_student(checkpoint, "cpu"), searcher.proposals)
    h = int(searcher.min_size)
    w = int(min(searcher.max_size, round(h * 4 / 3)))
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.4 * w, 0.9 * h], [0.5 * w, 0.2 * h, 0.7 * w, h]])
    report = agreement(net, searcher, [image], [boxes])
    precision = searcher.metadata.get("precision", "float32")
    text = (f"checked on a random {w}x{h} frame: detections {report['torch_counts'][0]} "
            f"(PyTorch) / {report['onnx_counts'][0]} (ONNX Runtime), matched boxes IoU >= "
            f"{report['min_iou']:.4f}, embeddings cosine >= {report['min_cosine']:.5f}, "
            f"query embeddings cosine >= {report['min_query_cosine']:.5f}")
    if precision != "float32":   # int8 is compared, not held to float tolerances
        return f"{text} ({precision}: not expected to match float32 exactly)"
    if not agrees(report):
        raise OnnxExportError(f"{onnx_path} disagrees with PyTorch: {text}")
    return text
