"""Agreement of an exported student (ONNX Runtime) with the PyTorch model it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from pipeline.models.student import PersonSearchNet, load_student
from pipeline.runtime.onnx.graph import OnnxExportError
from pipeline.runtime.onnx.runtime import OnnxSearcher

AGREEMENT_IOU = 0.99      # matched boxes, ONNX Runtime vs PyTorch, at least this IoU
AGREEMENT_COSINE = 0.999  # and their embeddings at least this cosine


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


@dataclass
class Agreement:
    """How closely ONNX Runtime reproduces PyTorch: detections per image in each, the smallest
    IoU of one-to-one matched boxes (0 when a detection is unmatched), the smallest cosine of
    their embeddings, the largest score difference, and the smallest cosine of the query-mode
    embeddings."""

    torch_counts: list[int] = field(default_factory=list)
    onnx_counts: list[int] = field(default_factory=list)
    min_iou: float = 1.0
    min_cosine: float = 1.0
    max_score_diff: float = 0.0
    min_query_cosine: float = 1.0

    def holds(self) -> bool:
        """Same detection counts, matched boxes and embeddings within the agreement limits."""
        return (self.torch_counts == self.onnx_counts and self.min_iou >= AGREEMENT_IOU
                and self.min_cosine >= AGREEMENT_COSINE
                and self.min_query_cosine >= AGREEMENT_COSINE)

    def add_detections(self, ref: dict, got: dict) -> None:
        self.torch_counts.append(len(ref["boxes"]))
        self.onnx_counts.append(len(got["boxes"]))
        rows, ious = _match(ref["boxes"], got["boxes"])
        if len(rows) < max(len(ref["boxes"]), len(got["boxes"])):
            self.min_iou = 0.0
        if len(rows):
            i, j = rows[:, 0], rows[:, 1]
            cos = _cosine(ref["embeddings"][i], got["embeddings"][j])
            self.min_iou = min(self.min_iou, float(ious.min()))
            self.min_cosine = min(self.min_cosine, float(cos.min()))
            self.max_score_diff = max(self.max_score_diff,
                                      float((ref["scores"][i] - got["scores"][j]).abs().max()))


def agreement(net: PersonSearchNet, searcher: OnnxSearcher, images: list[Tensor],
              query_boxes: list[Tensor]) -> Agreement:
    """How closely ``searcher`` (ONNX Runtime) reproduces ``net`` (PyTorch) on ``images`` and
    the query-mode embeddings of ``query_boxes``.

    PyTorch runs one image at a time as ONNX Runtime does: a batch pads every image to the
    largest, which changes the features near the right and bottom edges."""
    net = net.eval()
    out = Agreement()
    with torch.no_grad():
        refs = [net.detect([image])[0] for image in images]
        ref_queries = [net.embed_boxes([image], [b])[0] for image, b in zip(images, query_boxes)]
    for image, ref, qb, ref_q in zip(images, refs, query_boxes, ref_queries):
        out.add_detections(ref, searcher.detect([image])[0])
        if len(qb):
            got_q = searcher.embed_boxes([image], [qb])[0]
            out.min_query_cosine = min(out.min_query_cosine, float(_cosine(ref_q, got_q).min()))
    return out


def verify_export(checkpoint: str | Path, onnx_path: str | Path) -> str:
    """Run one random frame at the model's input size through both runtimes; -> a one-line
    summary, or OnnxExportError when they disagree."""
    searcher = OnnxSearcher(onnx_path)
    net = load_student(checkpoint, "cpu")
    net.set_proposals(searcher.proposals)
    h = int(searcher.min_size)
    w = int(min(searcher.max_size, round(h * 4 / 3)))
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.4 * w, 0.9 * h], [0.5 * w, 0.2 * h, 0.7 * w, h]])
    report = agreement(net, searcher, [image], [boxes])
    precision = searcher.metadata.get("precision", "float32")
    text = (f"checked on a random {w}x{h} frame: detections {report.torch_counts[0]} "
            f"(PyTorch) / {report.onnx_counts[0]} (ONNX Runtime), matched boxes IoU >= "
            f"{report.min_iou:.4f}, embeddings cosine >= {report.min_cosine:.5f}, "
            f"query embeddings cosine >= {report.min_query_cosine:.5f}")
    if precision != "float32":   # int8 is compared, not held to float tolerances
        return f"{text} ({precision}: not expected to match float32 exactly)"
    if not report.holds():
        raise OnnxExportError(f"{onnx_path} disagrees with PyTorch: {text}")
    return text
