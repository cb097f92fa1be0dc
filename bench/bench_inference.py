"""Student inference speed on full-size frames, and training memory, per precision mode.

    .venv/bin/python bench/bench_inference.py --device cuda            # the issue's setting
    .venv/bin/python bench/bench_inference.py --device cpu --quick     # a small smoke run

Frames are 1920x1080 (resized by the network to --min-size/--max-size, 900/1500 standard).
Inference modes: float32, bf16 autocast, bf16 + channels-last, bf16 + torch.compile of the
backbone; each reports frames/s at batch 1 and at --batch, and the cosine agreement of its
query embeddings with float32 on the same boxes. Training: images/s and peak memory at the
standard batch of 5 frames, without and with every distillation term. Weights are random
unless --checkpoint is given, so the detection count per frame is printed alongside.
Prints a markdown table; --record appends it to BENCHMARKS.md with the machine and date.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline.config import from_dict  # noqa: E402
from pipeline.config.distill import DistillConfig
from pipeline.config.model import ModelConfig  # noqa: E402
from pipeline.distill.student import build_student  # noqa: E402
from pipeline.models.student import load_student  # noqa: E402
from student_step import TERMS, random_targets  # noqa: E402

NUM_IDS = 500
EMB_DIM = 256


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(args, distill_terms=()) -> torch.nn.Module:
    if args.checkpoint:
        return load_student(args.checkpoint, device=args.device)
    model_cfg = from_dict(ModelConfig, dict(backbone=args.backbone, min_size=args.min_size,
                                            max_size=args.max_size))
    distill_cfg = from_dict(DistillConfig, {t: {"enabled": True} for t in distill_terms})
    pids = np.arange(NUM_IDS)
    feats = np.random.default_rng(0).standard_normal((NUM_IDS, EMB_DIM)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    torch.manual_seed(0)
    return build_student(model_cfg, distill_cfg, pids, (pids, feats)).to(args.device)


def autocast(mode: str, device: str):
    if mode == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def prepare(model, mode: str):
    """A model set up for the mode; compile wraps only the backbone (the dense part)."""
    if mode in ("bf16+channels_last", "bf16+compile"):
        model = model.to(memory_format=torch.channels_last)
    if mode == "bf16+compile":
        model.backbone = torch.compile(model.backbone, dynamic=False)
    return model


def frames_per_s(model, frames, batch, mode, device, iters) -> float:
    times = []
    with torch.no_grad(), autocast(mode, device):
        for i in range(iters + 2):   # two warm-ups (compile, cudnn autotune)
            chunk = [frames[(i * batch + j) % len(frames)] for j in range(batch)]
            sync(device)
            t0 = time.perf_counter()
            model.detect(chunk)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def embedding_agreement(model, reference, frames, boxes, mode, device) -> float:
    with torch.no_grad():
        ref = torch.cat(reference.embed_boxes(frames, boxes)).float()
        with autocast(mode, device):
            got = torch.cat(model.embed_boxes(frames, boxes)).float()
    return float(torch.nn.functional.cosine_similarity(ref, got, dim=1).min())


def inference_rows(args, frames):
    reference = build(args).eval()
    with torch.no_grad():
        dets = reference.detect(frames[:2])
    boxes = [d["boxes"][:20] if len(d["boxes"]) else torch.tensor([[100., 100., 200., 400.]],
                                                                 device=args.device)
             for d in dets]
    per_frame = statistics.mean(len(d["boxes"]) for d in dets)
    rows = []
    for mode in args.modes:
        model = prepare(build(args).eval(), mode)
        b1 = frames_per_s(model, frames, 1, mode, args.device, args.iters)
        bn = frames_per_s(model, frames, args.batch, mode, args.device, args.iters)
        cos = embedding_agreement(model, reference, frames[:2], boxes, mode, args.device)
        rows.append((mode, b1, bn, cos))
        print(f"  {mode:20s} batch 1 {b1:7.2f} frames/s  batch {args.batch} {bn:7.2f} frames/s"
              f"  min cosine vs fp32 {cos:.5f}", flush=True)
    return rows, per_frame


def training_row(args, frames, terms, amp: bool):
    model = build(args, terms).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    h, w = frames[0].shape[-2:]
    batch = frames[: args.train_batch]
    targets = [{k: v.to(args.device) for k, v in t.items()}
               for t in random_targets(len(batch), h, w, n_ids=NUM_IDS, dim=EMB_DIM, g=g)]
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.iters + 1):
        sync(args.device)
        t0 = time.perf_counter()
        with autocast("bf16" if amp else "float32", args.device):
            loss = sum(model(batch, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(args.device)
        if i >= 1:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    return len(batch) / statistics.median(times), peak


def machine(device: str) -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.machine())
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "no GPU"
    return f"{gpu}; {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--checkpoint", default=None, help="a trained student instead of random weights")
    p.add_argument("--frame", default="1920x1080")
    p.add_argument("--min-size", type=int, default=900)
    p.add_argument("--max-size", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--train-batch", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--modes", nargs="+",
                   default=["float32", "bf16", "bf16+channels_last", "bf16+compile"])
    p.add_argument("--quick", action="store_true", help="small frames and few iterations (CPU)")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    if args.quick:
        args.frame, args.min_size, args.max_size = "480x270", 270, 480
        args.batch, args.train_batch, args.iters = 2, 2, 2
        args.backbone = "resnet18" if args.backbone == "resnet50" else args.backbone
        args.modes = [m for m in args.modes if m != "bf16+compile"]
    w, h = map(int, args.frame.split("x"))
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(3, h, w, generator=g).to(args.device) for _ in range(max(8, args.batch))]
    print(f"# {machine(args.device)}\n# {args.backbone}, frames {args.frame} -> "
          f"{args.min_size}/{args.max_size}, random weights: {not args.checkpoint}")
    rows, per_frame = inference_rows(args, frames)
    train = []
    for name, terms in (("no distillation", ()), ("all distillation terms", TERMS)):
        for amp in ((False, True) if args.device.startswith("cuda") else (False,)):
            ips, peak = training_row(args, frames, terms, amp)
            label = f"{name}, {'bf16' if amp else 'float32'}"
            train.append((label, ips, peak))
            print(f"  train {label:34s} {ips:6.2f} images/s  peak {peak:.2f} GiB", flush=True)
    table = [f"| inference mode | batch 1 frames/s | batch {args.batch} frames/s | "
             f"min cosine vs float32 |", "|---|---|---|---|"]
    table += [f"| {m} | {b1:.2f} | {bn:.2f} | {c:.5f} |" for m, b1, bn, c in rows]
    table += ["", f"| training (batch {args.train_batch}) | images/s | peak GPU memory GiB |",
              "|---|---|---|"]
    table += [f"| {label} | {ips:.2f} | {peak:.2f} |" for label, ips, peak in train]
    text = "\n".join(table)
    print("\n" + text)
    if args.record:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Student inference and training speed ({args.backbone}, "
                    f"{args.frame} -> {args.min_size}/{args.max_size})\n\n"
                    f"- machine: {machine(args.device)}\n- command: `python bench/bench_inference.py "
                    f"{' '.join(sys.argv[1:])}`\n- date: {datetime.date.today()}\n"
                    f"- detections per frame (fp32): {per_frame:.1f}\n\n{text}\n")


if __name__ == "__main__":
    main()
