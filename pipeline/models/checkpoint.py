"""Checkpoints that rebuild their model alone and resume a run exactly.

A checkpoint is one ``torch.save`` dict (loaded back with ``weights_only=True``, so it holds
only tensors and plain containers)::

    format        CHECKPOINT_FORMAT
    model         state dict of the (unwrapped) model
    model_class   "module.Class" of the model that wrote it
    model_args    plain data a ``build_*`` function needs to rebuild the model (nanoGPT style)
    optimizer, scheduler   their state dicts, or None
    epoch         number of COMPLETED epochs
    global_step   optimizer steps taken so far
    rng           torch / cuda / numpy / python RNG states at save time
    config        the resolved run config (plain dict) or None
    extra         anything else the caller wants kept (plain data)

Loading into a model is always strict: a checkpoint of another model is refused with a message
that names the model that wrote it and the first keys that do not fit.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.files import atomic_path
from pipeline.models.torch_files import TorchFileError, load_torch_file

CHECKPOINT_FORMAT = "person-search-checkpoint/1"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, malformed, or belongs to another model."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# ------------------------------------------------------------------------------ RNG states

def get_rng_state() -> dict:
    """Every global RNG state, as tensors and plain containers (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------ save / load

def save_checkpoint(path: str | Path, model: nn.Module, *, optimizer=None, scheduler=None,
                    epoch: int = 0, global_step: int = 0,
                    model_args: dict | None = None, config: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bare = unwrap_model(model)
    if model_args is None:
        model_args = getattr(bare, "model_args", None)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": bare.state_dict(),
        "model_class": _class_name(bare),
        "model_args": model_args,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "rng": get_rng_state(),
        "config": config,
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict; clear errors for a missing or foreign file."""
    path = Path(path)
    try:
        ckpt = load_torch_file(path, map_location, what="checkpoint")
    except TorchFileError as e:  # its message never suggests weights_only=False
        raise CheckpointError(str(e)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        bare = isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values())
        kind = ("a bare state dict, without the model class and arguments that rebuild the "
                "model" if bare else "not written by this toolkit")
        raise CheckpointError(f"checkpoint {path} is unusable: it is {kind} (no "
                              f"{CHECKPOINT_FORMAT} format tag)")
    missing = [k for k in ("model", "model_class", "model_args") if k not in ckpt]
    if missing or not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"checkpoint {path} is unusable: incomplete (missing "
                              f"{missing or ['a state dict under model']})")
    return ckpt


def check_state_dict_fits(model: nn.Module, state: dict, *, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
        raise CheckpointError(f"{source} does not fit this model ({_class_name(model)}): "
                              + "; ".join(parts))


def load_state(model: nn.Module, state: dict, *, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, refusing with a message that says what differs."""
    check_state_dict_fits(model, state, source=source)
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | Path, model: nn.Module | None = None, *, optimizer=None,
                    scheduler=None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = False) -> dict:
    """Read a checkpoint and load it into whatever is given (model always ``strict=True``).

    Returns the checkpoint dict (``model_args``, ``epoch``, ``global_step``, ``config``, ...).
    """
    ckpt = read_checkpoint(path, map_location)
    if model is not None:
        bare = unwrap_model(model)
        source = f"checkpoint {path} (written by {ckpt.get('model_class')}, " \
                 f"model_args {ckpt.get('model_args')})"
        if ckpt.get("model_class") not in (None, _class_name(bare)):
            raise CheckpointError(f"{source} is for another kind of model than "
                                  f"{_class_name(bare)}")
        load_state(bare, ckpt["model"], source=source)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise CheckpointError(f"{path}: holds no optimizer state, cannot resume from it")
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        if ckpt.get("scheduler") is None:
            raise CheckpointError(f"{path}: holds no scheduler state, cannot resume from it")
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return ckpt
