"""Stage one, training: the teacher detector and the teacher Re-ID (``cli.py train-teacher``).

Both train with the shared :class:`~pipeline.engine.trainer.Trainer` into
``<out_dir>/detector`` and ``<out_dir>/reid``; ``checkpoint_last.pt`` there is the teacher the
cache is keyed on, and ``train_stats.json`` marks a finished run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from pipeline.config import ConfigError, load_config, to_dict
from pipeline.config.teacher import TeacherConfig
from pipeline.engine.schedule import build_scheduler
from pipeline.engine.trainer import Trainer, build_train_loader

PARTS = ("detector", "reid")
CHECKPOINT = "checkpoint_last.pt"
DONE_MARKER = "train_stats.json"


def part_dir(cfg: TeacherConfig, part: str) -> Path:
    if part not in PARTS:
        raise ConfigError(f"unknown teacher part {part!r}; expected one of {PARTS}")
    return Path(cfg.out_dir) / part


def checkpoint_of(cfg: TeacherConfig, part: str) -> Path:
    """The checkpoint of a teacher part (what the cache key hashes)."""
    return part_dir(cfg, part) / CHECKPOINT


def is_trained(cfg: TeacherConfig, part: str) -> bool:
    d = part_dir(cfg, part)
    return (d / CHECKPOINT).is_file() and (d / DONE_MARKER).is_file()


def _device(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for but CUDA is not available here")
    return dev


def detector_step(model, batch, device):
    """Faster R-CNN losses on a (images, targets) batch; every person box counts."""
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)}
               for t in targets]
    return model(images, targets)


def make_reid_step(label_smoothing: float, margin: float, triplet_weight: float):
    from pipeline.models.teacher_reid import batch_hard_triplet_loss, id_loss

    def reid_step(model, batch, device):
        crops, labels = batch
        crops, labels = crops.to(device, non_blocking=True), labels.to(device)
        feats, logits = model(crops)
        return {"id": id_loss(logits, labels, label_smoothing),
                "triplet": triplet_weight * batch_hard_triplet_loss(feats, labels, margin)}
    return reid_step


def _train_detector(cfg: TeacherConfig, records, run_dir: Path, resume: bool, progress: bool):
    from pipeline.data.torch_dataset import DetectionDataset, collate_detection
    from pipeline.models.teacher_detector import build_detector_from_config
    d = cfg.detector
    torch.manual_seed(d.seed)
    model = build_detector_from_config(d)
    dataset = DetectionDataset(records, flip_prob=0.5, seed=d.seed)
    loader = build_train_loader(dataset, batch_size=d.batch_size, collate_fn=collate_detection,
                                workers=cfg.data.workers, seed=d.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=d.lr, momentum=d.momentum, weight_decay=d.weight_decay)
    scheduler = build_scheduler(optimizer, schedule="cosine", iters_per_epoch=len(loader),
                                epochs=d.epochs, warmup_iters=d.warmup_iters, warmup_factor=0.01)
    return Trainer(model, optimizer, loader, run_dir, step_fn=detector_step, max_epochs=d.epochs,
                   scheduler=scheduler, grad_clip=d.grad_clip, device=_device(d.device),
                   amp_dtype="bfloat16" if d.amp else None, config_dict=to_dict(cfg),
                   progress=progress, keep_every_epoch=False, tensorboard=False)


def _train_reid(cfg: TeacherConfig, records, run_dir: Path, resume: bool, progress: bool):
    from torch.utils.data import DataLoader

    from pipeline.data.crops import CropDataset, PKSampler
    from pipeline.models.teacher_reid import build_reid
    r = cfg.reid
    torch.manual_seed(r.seed)
    size = (r.crop_height, r.crop_width)
    dataset = CropDataset(records, size, train=True, jitter=r.jitter, pad=r.pad, seed=r.seed)
    model = build_reid(r.backbone, embed_dim=r.embed_dim, num_classes=dataset.num_classes,
                       crop_size=size, pretrained_backbone=r.pretrained_backbone)
    sampler = PKSampler(dataset.labels, r.p_identities, r.k_crops, seed=r.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    scheduler = build_scheduler(optimizer, schedule="cosine", iters_per_epoch=len(loader),
                                epochs=r.epochs, warmup_iters=r.warmup_iters, warmup_factor=0.1)
    step = make_reid_step(r.label_smoothing, r.triplet_margin, r.triplet_weight)
    return Trainer(model, optimizer, loader, run_dir, step_fn=step, max_epochs=r.epochs,
                   scheduler=scheduler, device=_device(r.device),
                   amp_dtype="bfloat16" if r.amp else None, config_dict=to_dict(cfg),
                   progress=progress, keep_every_epoch=False, tensorboard=False)


def train_teacher_part(cfg: TeacherConfig, part: str, *, resume: bool = False,
                       progress: bool = True) -> Path:
    """Train one teacher part; returns its checkpoint path."""
    from pipeline.data import read_dataset
    run_dir = part_dir(cfg, part)
    records = read_dataset(cfg.data.dataset, cfg.data.root).train
    if not records:
        raise ConfigError(f"{cfg.data.root}: the training split is empty")
    build = _train_detector if part == "detector" else _train_reid
    trainer = build(cfg, records, run_dir, resume, progress)
    trainer.train(resume=resume and (run_dir / CHECKPOINT).is_file())
    return run_dir / CHECKPOINT


def train_teacher(config_path: str | Path, part: str, overrides: Sequence[str] = (), *,
                  resume: bool = False, progress: bool = True) -> Path:
    """``cli.py train-teacher``: load the config, train ``part``; returns its checkpoint."""
    cfg = load_config(config_path, TeacherConfig, overrides)
    return train_teacher_part(cfg, part, resume=resume, progress=progress)


def train_missing(cfg: TeacherConfig, *, progress: bool = True) -> list[str]:
    """Train every part not yet finished (an interrupted one resumes); returns what ran."""
    ran = []
    for part in PARTS:
        if not is_trained(cfg, part):
            train_teacher_part(cfg, part, resume=True, progress=progress)
            ran.append(part)
    return ran
