"""Static int8 quantization of an exported student's convolutions, calibrated on images."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor

from pipeline.data.images import load_image
from pipeline.models.student import PersonSearchNet
from pipeline.runtime.onnx.graph import OnnxExportError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def calibration_images(folder: str | Path, count: int = 16) -> list[Tensor]:
    """Up to ``count`` images spread evenly over the sorted image files under ``folder``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OnnxExportError(f"no images (.jpg, .jpeg, .png) under {folder} to calibrate int8 on")
    picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).astype(int))
    return [load_image(files[i]) for i in picks]



def calibration_feeds(net: PersonSearchNet, images: list[Tensor], sizes) -> tuple[list, list]:
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
