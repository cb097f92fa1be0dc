"""Students, frames and inference modes shared by the CPU benchmarks
(`bench_inference.py --cpu-table` for speed, `bench_fast_modes.py` for accuracy).

A mode is a runtime (PyTorch or ONNX Runtime), a precision and a few inference settings (input
size, proposals kept after the RPN's NMS); the network weights are the same in every mode.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import from_dict
from pipeline.config.model import ModelConfig
from pipeline.data import read_dataset
from pipeline.data.images import load_image, load_rgb
from pipeline.runtime.onnx.export import export_student
from pipeline.runtime.onnx.runtime import OnnxSearcher
from pipeline.models.checkpoint import load_state, read_checkpoint
from pipeline.models.student import TRAINING_ONLY, build_network, build_oim, \
    model_config_from_args

PUBLISHED = ModelConfig()  # PRW / CUHK-SYSU: 900/1500, RoIAlign 14, 6000/300 proposals
#: inference settings that set the cost of a frame; everything else comes from the checkpoint
COST_KEYS = ("min_size", "max_size", "roi_output_size", "rpn_pre_nms_top_n_test",
             "rpn_post_nms_top_n_test", "det_detections_per_img", "det_score_thresh")
RANDOM_IDS = 500


@dataclass(frozen=True)
class Mode:
    """How a student runs: runtime "torch" or "onnx", precision, settings overriding the base."""
    label: str
    runtime: str = "torch"
    bf16: bool = False
    channels_last: bool = False
    int8: bool = False            # ONNX Runtime only: convolutions quantized, calibrated
    settings: dict = field(default_factory=dict)


def published_settings(**overrides) -> dict:
    return {**{k: getattr(PUBLISHED, k) for k in COST_KEYS}, **overrides}


def student_with(checkpoint: str | None, backbone: str = "resnet18", **settings):
    """The student of ``checkpoint`` (random weights of ``backbone`` when None) with its
    inference settings replaced by ``settings``; eval mode, CPU."""
    if checkpoint:
        ckpt = read_checkpoint(checkpoint)
        args = copy.deepcopy(ckpt["model_args"])
        args["model"].update(settings)
        cfg = model_config_from_args(args)
        net = build_network(cfg, build_oim(cfg, np.asarray(args["identity_pids"])), args)
        load_state(net, {k: v for k, v in ckpt["model"].items()
                         if not k.startswith(TRAINING_ONLY)}, source=str(checkpoint))
    else:
        torch.manual_seed(0)
        cfg = from_dict(ModelConfig, {"backbone": backbone, **settings})
        net = build_network(cfg, build_oim(cfg, np.arange(RANDOM_IDS)))
    return net.eval()


class TorchRunner:
    def __init__(self, net, mode: Mode):
        if mode.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net, self.mode = net, mode

    def _context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.mode.bf16 \
            else contextlib.nullcontext()

    def detect(self, images: list[torch.Tensor], threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode(), self._context():
            return self.net.detect(images)

    def embed_boxes(self, images, boxes):
        with torch.inference_mode(), self._context():
            return [e.float() for e in self.net.embed_boxes(images, boxes)]


class OnnxRunner:
    """One ONNX Runtime session per thread count (ORT fixes the count at session creation)."""

    def __init__(self, net, mode: Mode, workdir: Path, calibration=None):
        if mode.int8 and not calibration:
            raise ValueError(f"{mode.label}: int8 needs calibration images")
        self.path = export_student(net, Path(workdir) / f"{abs(hash(mode.label))}.onnx",
                                   int8_calibration=calibration if mode.int8 else None)
        self.sessions: dict[int | None, OnnxSearcher] = {}

    def searcher(self, threads: int | None = None) -> OnnxSearcher:
        if threads not in self.sessions:
            self.sessions[threads] = OnnxSearcher(self.path, threads=threads)
        return self.sessions[threads]

    def detect(self, images, threads: int | None = None):
        return self.searcher(threads).detect(images)

    def embed_boxes(self, images, boxes):
        return self.searcher().embed_boxes(images, boxes)


def runner(checkpoint, backbone, mode: Mode, base: dict, workdir: Path, calibration=None):
    """A TorchRunner or OnnxRunner of ``mode``; ``calibration`` images for int8 modes."""
    net = student_with(checkpoint, backbone, **{**base, **mode.settings})
    if mode.runtime == "onnx":
        return OnnxRunner(net, mode, workdir, calibration)
    return TorchRunner(net, mode)


# ------------------------------------------------------------------ frames

def mosaic_frames(data_root, count: int, *, size=(1920, 1080), tile_scale: float,
                  tiles: int = 6, seed: int = 0, split: str = "test") -> list[torch.Tensor]:
    """``count`` frames of ``size`` (W, H): a grey, noisy ground with ``tiles`` synthetic
    scenes of ``split``, each scaled by ``tile_scale``, on distinct cells of a grid.
    (3, H, W) in [0, 1]."""
    data = read_dataset("prw", data_root)
    records = data.gallery if split == "test" else data.train
    rng = np.random.default_rng(seed)
    width, height = size
    frames = []
    for _ in range(count):
        canvas = np.clip(rng.normal(128, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        picks = rng.choice(len(records), tiles, replace=False)
        scenes = [Image.fromarray(load_rgb(records[i].path)) for i in picks]
        tw, th = (max(1, round(d * tile_scale)) for d in scenes[0].size)
        cells = [(r, c) for r in range(height // th) for c in range(width // tw)]
        for scene, k in zip(scenes, rng.choice(len(cells), tiles, replace=False)):
            r, c = cells[k]
            canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = np.asarray(
                scene.resize((tw, th), Image.BILINEAR))
        frames.append(torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255))
    return frames


def people_scale(checkpoint, data_root, frame_size=(1920, 1080), settings=None) -> float:
    """Tile scale that shows the synthetic people to the network at the size the checkpoint
    was trained on: (trained input / scene height) / (deployed input / frame)."""
    settings = settings or published_settings()
    trained_min = read_checkpoint(checkpoint)["model_args"]["model"]["min_size"]
    data = read_dataset("prw", data_root)
    scene_w, scene_h = Image.open(data.gallery[0].path).size
    trained = trained_min / min(scene_w, scene_h)
    w, h = frame_size
    deployed = min(settings["min_size"] / min(w, h), settings["max_size"] / max(w, h))
    return trained / deployed


def temporary_workdir():
    return tempfile.TemporaryDirectory(prefix="bench-onnx-")


def calibration_images(data_root, count: int = 8) -> list[torch.Tensor]:
    """Training-split frames for int8 calibration (never the test frames that are scored)."""
    train = read_dataset("prw", data_root).train
    picks = np.linspace(0, len(train) - 1, count).astype(int)
    return [load_image(train[i].path) for i in picks]
