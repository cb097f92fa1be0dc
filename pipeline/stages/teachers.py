"""Stage one, part one: train the two teachers with the shared Trainer.

``train_detector(cfg)`` -> ``out_dir/detector.pt``; ``train_reid(cfg)`` -> ``out_dir/reid.pt``.
Run dirs ``out_dir/detector/`` and ``out_dir/reid/`` hold the per-epoch checkpoints, losses.csv
and the resolved config; the final file is a copy of the last checkpoint without optimizer
state (model weights + model_args), which is what the cache key hashes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.config import ConfigError, to_dict
from pipeline.config.teacher import TeacherConfig
from pipeline.data import read_dataset
from pipeline.data.crops import CropDataset, PKSampler
from pipeline.data.records import DatasetError
from pipeline.data.torch_dataset import DetectionDataset, collate_detection
from pipeline.engine.distributed import check_device
from pipeline.engine.schedule import build_scheduler
from pipeline.engine.trainer import Trainer, build_train_loader
from pipeline.models.checkpoint import save_checkpoint
from pipeline.models.teacher_detector import build_teacher_detector
from pipeline.models.teacher_reid import batch_hard_triplet_loss, build_teacher_reid, id_loss

WARMUP_FACTOR = 0.001


def _train_records(cfg: TeacherConfig):
    records = read_dataset(cfg.data.dataset, cfg.data.root).train
    if not records:
        raise DatasetError(f"{cfg.data.root}: the training split is empty")
    return records


def _export(trainer: Trainer, model, final: Path, cfg: TeacherConfig) -> Path:
    """Weights + model_args of the trained model (no optimizer state) to ``final``."""
    return save_checkpoint(final, model, model_args=model.model_args, config=to_dict(cfg),
                           epoch=trainer.max_epochs, global_step=trainer.global_step)


# ------------------------------------------------------------------------------ detector

def detector_step(model, batch, device):
    """All boxes (labeled and unlabeled) are persons: labels = 1."""
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{"boxes": t["boxes"].to(device), "labels": torch.ones(len(t["boxes"]),
                dtype=torch.int64, device=device)} for t in targets]
    return model(images, targets)


def train_detector(cfg: TeacherConfig, *, resume: bool = False, progress: bool = True) -> Path:
    d = cfg.detector
    torch.manual_seed(d.seed)
    device = check_device(d.device, "detector.device")
    records = _train_records(cfg)
    model = build_teacher_detector(d)
    dataset = DetectionDataset(records, flip_prob=0.5 if d.flip else 0.0, seed=d.seed)
    loader = build_train_loader(dataset, batch_size=d.batch_size, collate_fn=collate_detection,
                                workers=d.workers, seed=d.seed, distributed=False,
                                pin_memory=device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=d.lr, momentum=d.momentum,
                                weight_decay=d.weight_decay)
    scheduler = build_scheduler(optimizer, schedule="step", iters_per_epoch=len(loader),
                                epochs=d.epochs, warmup_iters=d.warmup_iters,
                                warmup_factor=WARMUP_FACTOR, milestones_epochs=d.milestones)
    trainer = Trainer(model, optimizer, loader, Path(cfg.out_dir) / "detector",
                      step_fn=detector_step, max_epochs=d.epochs, scheduler=scheduler,
                      grad_clip=d.grad_clip, device=device,
                      amp=d.amp, config_dict=to_dict(cfg),
                      progress=progress, tensorboard=False)
    trainer.train(resume=resume)
    return _export(trainer, model, cfg.checkpoint("detector"), cfg)


# ------------------------------------------------------------------------------ re-id

def make_reid_step(label_smoothing: float, margin: float, triplet_weight: float):
    def reid_step(model, batch, device):
        crops, labels = batch
        out = model(crops.to(device, non_blocking=True))
        labels = labels.to(device)
        return {"loss_id": id_loss(out["logits"], labels, label_smoothing),
                "loss_triplet": triplet_weight * batch_hard_triplet_loss(out["features"],
                                                                         labels, margin)}
    return reid_step


def check_pk_batch(r, identities: int, root: str) -> None:
    """A PK batch needs P >= 2 identities (K >= 2 crops each) that the training split has."""
    if r.ids_per_batch < 2 or r.crops_per_id < 2:
        raise ConfigError(f"reid.ids_per_batch ({r.ids_per_batch}) and reid.crops_per_id "
                          f"({r.crops_per_id}) must both be at least 2 (batch-hard triplets)")
    if identities < 2:
        raise ConfigError(f"the training split of {root} has {identities} labeled identity; "
                          "the Re-ID teacher needs at least 2")
    if r.ids_per_batch > identities:
        raise ConfigError(f"reid.ids_per_batch={r.ids_per_batch} identities per batch, but the "
                          f"training split of {root} has only {identities}: use "
                          f"--set reid.ids_per_batch={identities} (or fewer)")


def train_reid(cfg: TeacherConfig, *, resume: bool = False, progress: bool = True) -> Path:
    r = cfg.reid
    torch.manual_seed(r.seed)
    device = check_device(r.device, "reid.device")
    dataset = CropDataset(_train_records(cfg), (r.crop_height, r.crop_width), jitter=r.jitter,
                          seed=r.seed)
    check_pk_batch(r, dataset.num_classes, cfg.data.root)
    sampler = PKSampler(dataset.labels, r.ids_per_batch, r.crops_per_id, seed=r.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=r.workers,
                        pin_memory=device.type == "cuda")
    model = build_teacher_reid(r, dataset.num_classes)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=r.lr,
                                 weight_decay=r.weight_decay)
    scheduler = build_scheduler(optimizer, schedule="step", iters_per_epoch=len(loader),
                                epochs=r.epochs, warmup_iters=r.warmup_iters,
                                warmup_factor=WARMUP_FACTOR, milestones_epochs=r.milestones)
    trainer = Trainer(model, optimizer, loader, Path(cfg.out_dir) / "reid",
                      step_fn=make_reid_step(r.label_smoothing, r.triplet_margin,
                                             r.triplet_weight),
                      max_epochs=r.epochs, scheduler=scheduler, device=device,
                      amp=r.amp, config_dict=to_dict(cfg),
                      progress=progress, tensorboard=False,
                      keep_every_epoch=False)  # many short epochs: checkpoint_last.pt only
    trainer.train(resume=resume)
    return _export(trainer, model, cfg.checkpoint("reid"), cfg)


#: how each teacher part is trained (stage one trains the missing ones)
TEACHER_TRAINERS = {"detector": train_detector, "reid": train_reid}
