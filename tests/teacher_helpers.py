"""Tiny teachers for tests: a config over the tiny synthetic PRW world, trained once per
session (the checkpoints are reused when they exist)."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import from_dict

TINY_TEACHER = {
    "data": {"dataset": "prw", "workers": 0},
    "detector": {"backbone": "resnet18", "fpn_channels": 32, "min_size": 96, "max_size": 128,
                 "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50,
                 "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30,
                 "box_batch_size_per_image": 32, "box_detections_per_img": 20,
                 "box_score_thresh": 0.0, "epochs": 1, "batch_size": 5, "lr": 0.005,
                 "warmup_iters": 2, "milestones": [], "workers": 0},
    "reid": {"backbone": "resnet18", "embedding_dim": 32, "crop_height": 32, "crop_width": 16,
             "ids_per_batch": 4, "crops_per_id": 2, "epochs": 2, "warmup_iters": 1,
             "milestones": [], "workers": 0},
    "cache": {"proposals_per_image": 6, "jitter_per_box": 2, "batch_size": 2, "workers": 0},
}


def tiny_teacher_config(root, base: Path, **sections):
    from pipeline.config.teacher import TeacherConfig
    tree = {k: dict(v) for k, v in TINY_TEACHER.items()}
    tree["data"]["root"] = str(root)
    tree["out_dir"] = str(base / "teachers")
    tree["cache"]["dir"] = str(base / "cache")
    for k, v in sections.items():
        tree[k].update(v)
    return from_dict(TeacherConfig, tree)


def trained_tiny_teachers(root, base: Path):
    """The tiny config with both teachers trained (once; later calls reuse the files)."""
    import torch

    from pipeline.stages.teachers import train_detector, train_reid
    cfg = tiny_teacher_config(root, base)
    torch.manual_seed(0)
    if not cfg.checkpoint("detector").is_file():
        train_detector(cfg, progress=False)
    if not cfg.checkpoint("reid").is_file():
        train_reid(cfg, progress=False)
    return cfg
