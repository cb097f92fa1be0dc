"""The two traced graphs of an exported student and their union into one file.

The whole network is traced (torch.onnx's TorchScript exporter, which follows torchvision's
ONNX paths for the RPN's top-k, NMS and RoIAlign); the image is resized inside the graph
exactly as PyTorch's transform does (the size computed in float64, floor(side * scale),
bilinear), so the two runtimes see the same pixels. Gallery and query mode are traced apart and
joined under one ``If`` on the number of query boxes; both branches share one copy of the
weights (:func:`combine_modes`).
"""
from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from pipeline.errors import UserError
from pipeline.models.student import PersonSearchNet
from pipeline.models.transform import PersonSearchTransform, resize_boxes

ONNX_OPSET = 17
GRAPH_INPUTS = ("image", "query_boxes", "min_size", "max_size")
GRAPH_OUTPUTS = ("boxes", "scores", "embeddings")


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


def trace(module: _Mode, args: tuple, input_names, output_names, dynamic) -> onnx.ModelProto:
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
