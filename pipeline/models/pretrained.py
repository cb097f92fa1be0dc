"""Published weights the standard way: torchvision's weights API and torch hub's cache.

``imagenet_state_dict("resnet50")`` is ``ResNet50_Weights.IMAGENET1K_V1.get_state_dict()``:
the file lies at ``torch.hub.get_dir()/checkpoints/<file name of the URL>`` (``$TORCH_HOME/hub``
or ``~/.cache/torch/hub``); when it is not there torch hub downloads it (hash checked) and keeps
it. Offline without the file, or with a damaged file, the error names the file, the folder it
belongs in and the setting that trains from scratch instead. Files are read with
``weights_only=True``: tensors and plain containers only.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from pipeline.errors import UserError
from pipeline.models.torch_files import TorchFileError, load_torch_file, what_is_wrong

IMAGENET_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
}
# torchvision's Faster R-CNN ResNet-50-FPN trained on COCO (91 classes): the teacher detector's
# optional starting point; every part but the class-specific box predictor carries over.
COCO_DETECTOR_WEIGHTS = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
COCO_PREDICTOR_PREFIX = "roi_heads.box_predictor."


class PretrainedWeightsMissing(UserError, FileNotFoundError):
    """Pretrained weights were asked for but cannot be used: not on disk and no download, a
    damaged file, or weights of another network. ``hub_path``: the torch hub file (the message
    says which folder it belongs in); ``setting``: the config key that switches the weights
    off, named in the message (:meth:`for_setting` changes it)."""

    def __init__(self, problem: str, hub_path: Path | None = None,
                 setting: str = "model.pretrained"):
        self.problem, self.hub_path, self.setting = problem, hub_path, setting
        super().__init__(str(self))

    def __str__(self) -> str:
        where = (f": {self.hub_path.name} belongs in {self.hub_path.parent}/ (torch hub's "
                 f"cache: copy it there, or run once with network access)"
                 if self.hub_path is not None else "")
        return f"{self.problem}{where}; or train from scratch with --set {self.setting}=false"

    def for_setting(self, setting: str) -> "PretrainedWeightsMissing":
        """The same error, naming ``setting`` (e.g. ``detector.pretrained``) as the way out."""
        return PretrainedWeightsMissing(self.problem, self.hub_path, setting)


def hub_file(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torch hub keeps the file of ``weights`` (whether or not it is there yet)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_hub_weights(weights: torchvision.models.WeightsEnum, *, progress: bool = True) -> dict:
    """``weights.get_state_dict(...)`` (downloaded into torch hub's cache when missing), with
    every failure turned into :class:`PretrainedWeightsMissing`."""
    path = hub_file(weights)
    had_file = path.is_file()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch hub announces downloads on stdout
            return weights.get_state_dict(progress=progress, check_hash=True,
                                          weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - no network, refused, cut, bad hash, bad file
        if had_file:  # nothing was downloaded: the file itself is unusable
            raise PretrainedWeightsMissing(
                f"{weights} weights file {path} is unusable ({what_is_wrong(path, e)}); delete "
                f"it to fetch it again", path) from None
        raise PretrainedWeightsMissing(
            f"{weights} weights are not on this machine and could not be downloaded from "
            f"{weights.url} ({_first_line(e)})", path) from None


def load_weights_file(path: str | Path) -> dict:
    """A state dict from an explicit file (``model.weights_path``)."""
    try:
        return load_torch_file(path, what="pretrained weights file")
    except TorchFileError as e:
        raise PretrainedWeightsMissing(str(e)) from None


def imagenet_state_dict(name: str, weights_path: str | None = None) -> dict:
    """ImageNet state dict of torchvision ResNet ``name`` (from ``weights_path`` if given)."""
    if weights_path:
        return load_weights_file(weights_path)
    if name not in IMAGENET_WEIGHTS:
        raise ValueError(f"no ImageNet weights for {name!r}; expected one of "
                         f"{sorted(IMAGENET_WEIGHTS)}")
    return load_hub_weights(IMAGENET_WEIGHTS[name])


def coco_detector_state_dict() -> dict:
    """torchvision's COCO Faster R-CNN ResNet-50-FPN weights without the 91-class predictor."""
    state = load_hub_weights(COCO_DETECTOR_WEIGHTS)
    return {k: v for k, v in state.items() if not k.startswith(COCO_PREDICTOR_PREFIX)}


def load_pretrained(module: nn.Module, state: dict, source: str, *,
                    skip_prefix: str | None = None) -> None:
    """Load ``state`` into ``module`` strictly (except keys under ``skip_prefix``, which keep
    their fresh initialisation); a file for another network is a clear error, not a
    state-dict traceback. ``source`` names the weights in the message."""
    def counted(key: str) -> bool:  # BN step counters: torch fills or drops them itself
        return not key.endswith("num_batches_tracked") and not (
            skip_prefix is not None and key.startswith(skip_prefix))
    own = {k: v for k, v in module.state_dict().items() if counted(k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and counted(k)]
    shapes = [k for k in own if k in state
              and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        first = (missing or unexpected or shapes)[0]
        raise PretrainedWeightsMissing(
            f"{source} do not fit this {type(module).__name__}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} differently shaped tensors "
            f"(first: {first})")
    module.load_state_dict(state, strict=skip_prefix is None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
