"""Tiny student configs, images and (cached-teacher-like) targets shared by the student tests."""
import numpy as np
import torch

from pipeline.config import from_dict
from pipeline.config.distill import DistillConfig
from pipeline.config.model import ModelConfig

PIDS = np.array([933, 2, 50])       # not contiguous, as in PRW
EMB_DIM = 32
TEACHER_DIM = 16
H, W = 96, 128


def tiny_model_cfg(**kw) -> ModelConfig:
    base = dict(backbone="resnet18", norm="batch", min_size=96, max_size=128,
                anchor_sizes=[16, 32, 64], aspect_ratios=[0.5, 1.0, 2.0],
                rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=40,
                rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
                rpn_batch_size_per_image=64, roi_output_size=7, roi_batch_size_per_image=16,
                embedding_dim=EMB_DIM, oim_queue_size=8, det_score_thresh=0.0)
    base.update(kw)
    return from_dict(ModelConfig, base)


def distill_cfg(*terms, **sections) -> DistillConfig:
    data = {t: {"enabled": True} for t in terms}
    for k, v in sections.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return from_dict(DistillConfig, data)


def teacher_table(dim=TEACHER_DIM, seed=0):
    """(pids, features, counts) like TeacherCache.identity_table(): other order, one extra id."""
    g = np.random.default_rng(seed)
    pids = np.array([50, 7, 933, 2])
    feats = g.standard_normal((4, dim)).astype(np.float32)
    return pids, feats / np.linalg.norm(feats, axis=1, keepdims=True), np.ones(4, np.int64)


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, H, W, generator=g) for _ in range(n)]


def target(seed=0, dim=TEACHER_DIM, pids=(933, -1, 50), n_props=24, n_jitter=6):
    """Boxes, pids and every cached teacher key (the keys of cache.schema.ENTRY_KEYS), random but valid."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[8.0, 10.0, 38.0, 80.0], [50.0, 20.0, 80.0, 90.0],
                          [90.0, 5.0, 120.0, 70.0]])[: len(pids)]
    xy = torch.rand(n_props, 2, generator=g) * torch.tensor([W - 40.0, H - 60.0])
    props = torch.cat([xy, xy + torch.tensor([30.0, 55.0])], 1)
    j = boxes.repeat(n_jitter // max(len(pids), 1) or 1, 1)[:n_jitter] if len(pids) else \
        torch.zeros(0, 4)
    j = j + torch.randn(j.shape, generator=g)
    feat = lambda n: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return {"boxes": boxes, "pids": torch.tensor(pids, dtype=torch.int64).reshape(-1),
            "labels": torch.ones(len(pids), dtype=torch.int64),
            "gt_features": feat(len(pids)), "proposal_boxes": props,
            "proposal_logits": torch.randn(n_props, 2, generator=g) * 3,
            "proposal_refined_boxes": props + torch.randn(n_props, 4, generator=g) * 2,
            "proposal_features": feat(n_props),
            "jitter_boxes": j, "jitter_features": feat(j.shape[0]),
            # non-tensor entries as the dataset adds them: ignored by the model
            "name": f"img{seed}.jpg", "image_index": seed, "flipped": False, "orig_size": (H, W)}


def targets(n=2, **kw):
    return [target(seed=i, **kw) for i in range(n)]
