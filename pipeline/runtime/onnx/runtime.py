"""Run an exported student (see onnx_export.py) with ONNX Runtime: NumPy and onnxruntime only,
so a machine without PyTorch's GPU stack can index and search.

``OnnxSearcher`` has the searcher interface of ``PersonSearchNet`` and ``TwoStepSearcher``:
``detect(images)`` -> per image {"boxes" (K,4), "scores" (K,), "embeddings" (K,D)} and
``embed_boxes(images, boxes)`` -> per image (N,D). Images are (3,H,W) float in [0,1] at their
original size, boxes x1, y1, x2, y2 in original pixels; embeddings are unit norm. Outputs are
torch tensors when the images were torch tensors (a drop-in for the PyTorch searchers), NumPy
arrays otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.config.model import check_input_size, proportional_max_size
from pipeline.errors import SettingError, UserError

RUNTIMES = ("torch", "onnx")           # what a student can run in (evaluate --runtime)
ONNX_FORMAT = "person-search-onnx/1"   # the format onnx_export.py writes
QUIET = 3                              # ORT log level "error": the optional inputs are intended


class OnnxModelError(UserError, ValueError):
    """The file is not a student exported by this toolkit, or cannot be loaded."""


def default_providers(device: str = "cpu") -> list[str]:
    """CUDA first when asked for and present, else the CPU."""
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if str(device).startswith("cuda") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):   # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _like(array: np.ndarray, example):
    """``array`` as a torch tensor on ``example``'s device when that is one, else as is."""
    if not _is_torch(example):
        return array
    import torch  # only when the caller already works in torch (optional here)
    return torch.from_numpy(array).to(example.device)


class OnnxSearcher:
    """An exported student behind ONNX Runtime.

    providers: ONNX Runtime execution providers (default ``default_providers(device)``).
    threads: intra-op threads (None: ONNX Runtime's default, all physical cores).
    min_size / max_size: the resized shorter side and the cap on the longer one (default: the
    exported model's); ``set_input_size`` changes them later.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", providers=None,
                 threads: int | None = None, min_size: float | None = None,
                 max_size: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.log_severity_level = QUIET
        # idle threads sleep instead of spinning: on a CPU shared with other jobs a spinning
        # pool took 2.8x the wall time (bench_inference.py --cpu-table, BENCHMARKS.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or default_providers(device))
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise OnnxModelError(f"{self.path}: ONNX Runtime cannot load it ({e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != ONNX_FORMAT:
            raise OnnxModelError(f"{self.path}: not a student exported by `cli.py export` "
                                 f"(format {meta.get('format')!r}, expected {ONNX_FORMAT!r})")
        self.metadata = meta
        self.model_args = json.loads(meta.get("model_args", "{}"))
        self.embedding_dim = int(meta["embedding_dim"])
        self.trained_min_size = float(meta["min_size"])
        self.trained_max_size = float(meta["max_size"])
        self.min_size, self.max_size = self.trained_min_size, self.trained_max_size
        self.proposals = int(meta["proposals"])
        if min_size is not None:
            self.set_input_size(min_size, max_size)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def set_input_size(self, min_size: float, max_size: float | None = None) -> None:
        """Resize frames so the shorter side is ``min_size`` (the longer at most ``max_size``,
        by default in the exported model's max/min proportion)."""
        check_input_size(min_size, max_size)
        self.min_size = float(min_size)
        self.max_size = float(max_size) if max_size is not None else float(
            proportional_max_size(min_size, self.trained_min_size, self.trained_max_size))

    @property
    def input_size(self) -> tuple[float, float]:
        return self.min_size, self.max_size

    def set_proposals(self, count: int) -> None:
        """The count is fixed in the file: only that count is accepted."""
        if int(count) != self.proposals:
            raise SettingError(f"{self.path} scores {self.proposals} proposals, fixed at export "
                               f"(cli.py export --proposals {count} makes a file that scores "
                               f"{count})")

    def _feeds(self, image: np.ndarray, boxes: np.ndarray | None = None) -> dict:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image must be (3, H, W), got shape {image.shape}")
        feeds = {"image": image, "min_size": np.array(self.min_size, np.float64),
                 "max_size": np.array(self.max_size, np.float64)}
        if boxes is not None:
            feeds["query_boxes"] = boxes
        return feeds

    def detect(self, images) -> list[dict]:
        """Gallery mode, one image at a time: per image {"boxes", "scores", "embeddings"}."""
        out = []
        for image in images:
            boxes, scores, embeddings = self.session.run(None, self._feeds(_to_numpy(image)))
            out.append({"boxes": _like(boxes, image), "scores": _like(scores, image),
                        "embeddings": _like(embeddings, image)})
        return out

    def embed_boxes(self, images, boxes) -> list:
        """Query mode: per image the (N,D) embeddings of its (N,4) boxes."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
        out = []
        for image, b in zip(images, boxes):
            b = _to_numpy(b).reshape(-1, 4)
            if len(b) == 0:  # zero boxes would select gallery mode: answer directly
                emb = np.zeros((0, self.embedding_dim), np.float32)
            else:
                emb = self.session.run(["embeddings"], self._feeds(_to_numpy(image), b))[0]
            out.append(_like(emb, image))
        return out
