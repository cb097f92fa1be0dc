"""Time one student training step (forward + backward + SGD step) on random images and random
cached teacher targets, without and with every distillation term.

    .venv/bin/python bench/student_step.py --backbone resnet18 --height 240 --width 300 \
        --batch 2 --post-nms 300 --rois 64 --steps 5 [--roi-size 14] [--device cpu]

Prints one line per setting: seconds per step and per image (median over --steps after one
warm-up step), with the machine, torch version and thread count.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import from_dict  # noqa: E402
from pipeline.config.distill import DistillConfig
from pipeline.config.model import ModelConfig  # noqa: E402
from pipeline.distill.student import build_student  # noqa: E402

TERMS = ("lut", "feature", "relation", "detector", "jitter")


def random_targets(n_images, h, w, *, persons=5, n_ids=50, dim=256, props=128, jitter=4, g=None):
    out = []
    for _ in range(n_images):
        xy = torch.rand(persons, 2, generator=g) * torch.tensor([w - 60.0, h - 120.0])
        boxes = torch.cat([xy, xy + torch.tensor([40.0, 100.0])], 1)
        pids = torch.randint(0, n_ids, (persons,), generator=g)
        pids[-1] = -1
        pxy = torch.rand(props, 2, generator=g) * torch.tensor([w - 60.0, h - 120.0])
        pb = torch.cat([pxy, pxy + torch.tensor([40.0, 100.0])], 1)
        jb = boxes.repeat(jitter, 1) + torch.randn(persons * jitter, 4, generator=g) * 3
        feat = lambda n: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
        out.append({"boxes": boxes, "pids": pids, "labels": torch.ones(persons, dtype=torch.int64),
                    "gt_features": feat(persons), "proposal_boxes": pb,
                    "proposal_logits": torch.randn(props, 2, generator=g),
                    "proposal_refined_boxes": pb + torch.randn(props, 4, generator=g),
                    "jitter_boxes": jb, "jitter_features": feat(persons * jitter)})
    return out


def time_steps(args, distill_terms) -> list[float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model_cfg = from_dict(ModelConfig, dict(
        backbone=args.backbone, norm=args.norm, min_size=min(args.height, args.width),
        max_size=max(args.height, args.width), rpn_post_nms_top_n_train=args.post_nms,
        rpn_pre_nms_top_n_train=args.pre_nms, roi_batch_size_per_image=args.rois,
        roi_output_size=args.roi_size, embedding_dim=256, oim_queue_size=500))
    distill_cfg = from_dict(DistillConfig, {t: {"enabled": True} for t in distill_terms})
    pids = np.arange(50)
    table = (pids, np.random.default_rng(0).standard_normal((50, 256)).astype(np.float32))
    net = build_student(model_cfg, distill_cfg, pids, table).to(args.device).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4,
                          momentum=0.9)
    images = [torch.rand(3, args.height, args.width, generator=g).to(args.device)
              for _ in range(args.batch)]
    targets = [{k: v.to(args.device) for k, v in t.items()}
               for t in random_targets(args.batch, args.height, args.width, g=g)]
    times = []
    for _ in range(args.steps + 1):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses = net(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--norm", default="frozen")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=300)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--pre-nms", type=int, default=2000)
    p.add_argument("--post-nms", type=int, default=300)
    p.add_argument("--rois", type=int, default=64)
    p.add_argument("--roi-size", type=int, default=14)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()} torch "
          f"{torch.__version__} threads {torch.get_num_threads()} device {args.device}")
    print(f"# {args.backbone} norm={args.norm} {args.height}x{args.width} batch {args.batch} "
          f"post-NMS {args.post_nms} RoIs/img {args.rois} RoIAlign {args.roi_size}")
    for name, terms in (("no distillation", ()), ("all distillation terms", TERMS)):
        t = statistics.median(time_steps(args, terms))
        print(f"{name:24s} {t:.3f} s/step  {t / args.batch:.3f} s/image")


if __name__ == "__main__":
    main()
