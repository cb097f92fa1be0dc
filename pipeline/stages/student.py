"""Stage two: train an end-to-end student from the teacher cache (``cli.py train-student``).

config -> dataset -> the cache contract (opened through ``cache/``, checked against the training
split and the enabled distillation terms BEFORE the first step) -> student -> optimizer and
schedule -> :class:`~pipeline.engine.trainer.Trainer`.

The teacher's code is never imported here: everything the teacher knows comes from the cache.
A student without any distillation term needs no cache at all.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml

from cache import CacheMismatchError, TeacherCache, split_fingerprint
from cache.key import cache_path
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.config.student import StudentConfig
from pipeline.config.teacher import TeacherConfig
from pipeline.data import read_dataset
from pipeline.data.torch_dataset import collate_detection
from pipeline.distill.dataset import StudentDataset
from pipeline.distill.student import build_student
from pipeline.distill.terms import TermNeeds, term_needs
from pipeline.engine import distributed as dist_utils
from pipeline.engine.schedule import build_scheduler
from pipeline.engine.trainer import Trainer, build_train_loader
from pipeline.errors import UserError

#: config keys that may change between a run and its resume
RESUME_MAY_CHANGE = ("train.device", "train.epochs", "train.log_every", "data.workers",
                     "data.root")


class CacheContractError(UserError, RuntimeError):
    """The teacher cache is missing or does not fit this run; the message says what to do."""


# ------------------------------------------------------------------------------ the cache

def cache_needs(cfg: StudentConfig) -> TermNeeds:
    """What the enabled distillation terms need from the cache; flipped-image teacher outputs
    when flips are on and any term reads per-image keys."""
    needs = term_needs(cfg.distill)
    return replace(needs, flip=bool(cfg.data.flip and needs.keys))


def resolve_cache_path(cfg: StudentConfig) -> Path:
    """``cfg.cache`` if given, else the cache file of ``cfg.teacher_config``."""
    if cfg.cache:
        return Path(cfg.cache)
    teacher_cfg = load_config(cfg.teacher_config, TeacherConfig)
    if teacher_cfg.data.dataset != cfg.data.dataset:
        raise CacheContractError(
            f"teacher config {cfg.teacher_config} is for dataset {teacher_cfg.data.dataset!r}, "
            f"this student trains on {cfg.data.dataset!r}")
    try:
        return Path(cache_path(teacher_cfg))
    except FileNotFoundError as e:  # the key hashes the teacher weights: none trained yet
        raise CacheContractError(
            f"no teacher cache for {cfg.teacher_config} ({e}); build it first with "
            f"`make teacher-cache CONFIG={cfg.teacher_config}`") from None


def open_checked_cache(cfg: StudentConfig, train_records) -> tuple[object, Path, TermNeeds]:
    """Open the cache and check it against the split and the terms; (cache, path, needs)."""
    needs = cache_needs(cfg)
    path = resolve_cache_path(cfg)
    if not path.is_file():
        raise CacheContractError(
            f"teacher cache not found: {path}; build it first with "
            f"`make teacher-cache CONFIG={cfg.teacher_config}`")
    try:
        cache = TeacherCache(path)
    except CacheMismatchError as e:
        raise CacheContractError(str(e)) from None
    try:
        cache.check_compatible(split_fingerprint(train_records), dataset=cfg.data.dataset,
                               need_flip=needs.flip, need_proposals=needs.proposals,
                               need_jitter=needs.jitter)
    except CacheMismatchError as e:
        raise CacheContractError(f"teacher cache {path} does not fit this run "
                                 f"(terms {list(needs.terms)}): {e}") from None
    return cache, path, needs


def cache_record(cache, path: Path | None, needs: TermNeeds) -> dict:
    """What ``run_dir/cache.json`` holds: the cache file and its fingerprints."""
    if cache is None:
        return {"cache": None, "reason": "no distillation term enabled", "terms": []}
    m = cache.meta
    return {"cache": str(path), "schema_version": m.schema_version, "dataset": m.dataset,
            "split_fingerprint": m.split_fingerprint,
            "detector_fingerprint": m.detector_fingerprint,
            "reid_fingerprint": m.reid_fingerprint, "config_fingerprint": m.config_fingerprint,
            "created": m.created, "terms": list(needs.terms), "keys": list(needs.keys),
            "flip_views_used": needs.flip}


# ------------------------------------------------------------------------------ pieces

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, train) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, betas=(train.momentum, 0.999),
                                 weight_decay=train.weight_decay)
    raise ConfigError(f"train.optimizer: unknown {train.optimizer!r}")


def student_step(model, batch, device):
    """The student's ``step_fn``: move the batch, return the model's weighted losses."""
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in t.items()} for t in targets]
    return model(images, targets)


def balance_weights(model) -> dict:
    """The trainer's ``metrics_fn``: the weights the loss balance gave this step (none
    without a distiller or with the fixed balance)."""
    return model.distiller.balance.weights() if model.distiller is not None else {}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_config(run_dir: Path, cfg: StudentConfig, cache_info: dict) -> None:
    """Refuse to resume a run with a different config (beyond RESUME_MAY_CHANGE) or cache."""
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        try:
            saved = _flat(yaml.safe_load(saved_path.read_text()) or {})
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"cannot resume {run_dir}: its config.yaml is unreadable "
                              f"({type(e).__name__})") from None
        now = _flat(to_dict(cfg))
        diff = sorted(k for k in set(saved) | set(now)
                      if saved.get(k) != now.get(k) and k not in RESUME_MAY_CHANGE)
        if diff:
            raise ConfigError(f"cannot resume {run_dir}: the config differs from the run's in "
                              + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})"
                                          for k in diff[:6]))
    saved_cache = run_dir / "cache.json"
    if saved_cache.is_file():
        try:
            old = json.loads(saved_cache.read_text())
            old.get("cache")
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"cannot resume {run_dir}: its cache.json is unreadable "
                              f"({type(e).__name__})") from None
        keys = ("cache", "split_fingerprint", "detector_fingerprint", "reid_fingerprint",
                "config_fingerprint")
        changed = [k for k in keys if old.get(k) != cache_info.get(k)]
        if changed:
            raise CacheContractError(f"cannot resume {run_dir}: it was trained from another "
                                     f"teacher cache ({', '.join(changed)} differ)")


# ------------------------------------------------------------------------------ the command

def _student_loader(cfg: StudentConfig, records, cache_file, needs: TermNeeds, distributed: bool,
                    dev):
    """Training images with the cached targets the terms read (flipped half of the time)."""
    t = cfg.train
    dataset = StudentDataset(records, cache_path=cache_file if needs.keys else None,
                             cache_keys=list(needs.keys),
                             flip_prob=0.5 if cfg.data.flip else 0.0, seed=t.seed)
    return build_train_loader(dataset, batch_size=t.batch_size, collate_fn=collate_detection,
                              workers=cfg.data.workers, seed=t.seed, distributed=distributed,
                              pin_memory=dev.type == "cuda")


def train_student(config_path: str | Path, overrides: Sequence[str] = (), *, resume: bool = False,
                  device: str | None = None, progress: bool = True) -> Path:
    """Train one student; returns its run directory."""
    overrides = list(overrides) + ([f"train.device={device}"] if device else [])
    cfg = load_config(config_path, StudentConfig, overrides)
    t = cfg.train
    dist_utils.check_device(t.device, "train.device")
    dev, distributed = dist_utils.init_distributed(t.device)
    seed_everything(t.seed)

    data = read_dataset(cfg.data.dataset, cfg.data.root)
    records = data.train
    if not records:
        raise ConfigError(f"{cfg.data.root}: the training split is empty")

    cache, cache_file, needs = None, None, cache_needs(cfg)
    if needs.terms:
        cache, cache_file, needs = open_checked_cache(cfg, records)
    info = cache_record(cache, cache_file, needs)
    run_dir = Path(cfg.run_dir)
    if resume:
        check_resume_config(run_dir, cfg, info)

    table = cache.identity_table() if cache is not None and needs.teacher_table else None
    model = build_student(cfg.model, cfg.distill, data.train_identities(),
                          teacher_identity_table=table,
                          teacher_embedding_dim=cache.meta.embedding_dim if cache else None)

    loader = _student_loader(cfg, records, cache_file, needs, distributed, dev)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, schedule=t.schedule, iters_per_epoch=len(loader),
                                epochs=t.epochs, warmup_iters=t.warmup_iters,
                                warmup_factor=t.warmup_factor, milestones_epochs=t.milestones,
                                gamma=t.gamma)
    trainer = Trainer(model, optimizer, loader, run_dir, step_fn=student_step,
                      max_epochs=t.epochs, scheduler=scheduler, grad_clip=t.grad_clip,
                      device=dev, amp=t.amp, log_every=t.log_every, config_dict=to_dict(cfg),
                      distributed=distributed, progress=progress, metrics_fn=balance_weights)
    if trainer.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        info["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (run_dir / "cache.json").write_text(json.dumps(info, indent=2) + "\n")
    try:
        trainer.train(resume=resume)
    finally:
        if distributed:
            dist_utils.cleanup()
    return run_dir
