"""ResNet split in the C4 layout of OIM / SeqNet / Munjal et al.

``conv1 .. layer3`` is the backbone: one feature map ``feat_res4`` at stride 16 that the RPN and
the RoI pooling read. ``layer4`` is the RoI head trunk (res5): it runs on every pooled RoI, then
global average pooling gives one vector per box.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

RESNETS = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights"),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights"),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights"),
}
NORMS = ("frozen", "batch")


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights were asked for but are not on disk (nothing is downloaded silently)."""


class ResNetC4Backbone(nn.Sequential):
    """``conv1 .. layer3``: (B,3,H,W) normalised images -> (B, out_channels, H/16, W/16)."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            self.add_module(name, getattr(resnet, name))
        last = resnet.layer3[-1]
        self.out_channels = _out_channels(last)


class Res5Head(nn.Module):
    """``layer4`` + global average pooling: pooled RoIs (N,C4,h,w) -> (N, out_channels)."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        self.layer4 = resnet.layer4
        last = resnet.layer4[-1]
        self.out_channels = _out_channels(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer4(x), 1), 1)


def _out_channels(block: nn.Module) -> int:
    """Output channels of a BasicBlock / Bottleneck."""
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels


def _pretrained_state(name: str, weights_path: str | None) -> dict:
    """ImageNet state dict from ``weights_path`` or torch hub's cache; never downloads."""
    if weights_path:
        path = Path(weights_path)
    else:
        weights = getattr(torchvision.models, RESNETS[name][1]).IMAGENET1K_V1
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        url = weights.url
    if not path.is_file():
        hint = "" if weights_path else f"; download {url} to that path first"
        raise PretrainedWeightsMissing(
            f"pretrained {name} weights not found at {path}{hint} (or set model.pretrained=false)")
    return torch.load(path, map_location="cpu", weights_only=True)


def build_resnet_c4(name: str = "resnet50", *, norm: str = "frozen", pretrained: bool = False,
                    weights_path: str | None = None,
                    frozen_stages: int = 0) -> tuple[ResNetC4Backbone, Res5Head]:
    """(backbone, res5 head) of a torchvision ResNet.

    norm: "frozen" (FrozenBatchNorm2d, the standard with ImageNet weights) or "batch" (trainable
    BatchNorm2d, better from scratch). frozen_stages: stages whose weights get no gradient,
    from the stem (0 none, 1 the stem, 2 stem + layer1, ...; :func:`freeze_stages`).
    """
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(RESNETS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
    resnet = RESNETS[name][0](weights=None, norm_layer=norm_layer)
    if pretrained or weights_path:
        state = _pretrained_state(name, weights_path)
        resnet.load_state_dict(state, strict=True)
    freeze_stages(resnet, frozen_stages)
    return ResNetC4Backbone(resnet), Res5Head(resnet)


#: a ResNet's stages from the stem up; ``frozen_stages = k`` freezes the first k
STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def freeze_stages(resnet: nn.Module, frozen_stages: int) -> None:
    """No gradient for the first ``frozen_stages`` stages (0..5), counted from the stem; the
    teachers and the student count alike."""
    if not 0 <= frozen_stages <= len(STAGES):
        raise ValueError(f"frozen_stages must lie in 0..{len(STAGES)}, got {frozen_stages}")
    for stage in STAGES[:frozen_stages]:
        for module_name in stage:
            for p in getattr(resnet, module_name).parameters():
                p.requires_grad_(False)
