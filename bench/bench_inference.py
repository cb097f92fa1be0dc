"""Student inference speed on full-size frames, and training memory, per precision mode.

    .venv/bin/python bench/bench_inference.py --device cuda            # the issue's setting
    .venv/bin/python bench/bench_inference.py --device cpu --quick     # a small smoke run
    .venv/bin/python bench/bench_inference.py --cpu-table \
        --checkpoint work/runs/student-synthetic-r18-distilled/checkpoint_last.pt  # CPU: see below

--cpu-table: frames/s on the CPU, PyTorch vs ONNX Runtime (and the other fast modes), R18 and
R50 students and a ResNet-50 SeqNet-style baseline (the R50 student in PyTorch float32, the
published settings), at each of --threads, all modes interleaved frame by frame so that load
from other jobs hits every mode alike; ratios to the baseline at the same thread count. The
frames are 1920x1080 mosaics of synthetic test scenes, scaled so the people reach the network
at the size the trained student saw (about 64-144 px tall at 900/1500): a trained student then
finds a realistic number of people (printed per mode). Models run with the published PRW
inference settings (900/1500, RoIAlign 14, 6000/300 proposals, <= 100 detections) unless a
mode says otherwise; --r50-checkpoint gives trained R50 weights, else they are random and the
R50 keeps every proposal as a candidate (score threshold off) and is capped at the R18's
detection count, so its embedding work is the same as a trained one's. int8 modes are
calibrated on two mosaics of training scenes.

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
import copy
import datetime
import os
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
from cpu_modes import Mode, mosaic_frames, people_scale, published_settings, runner, \
    temporary_workdir  # noqa: E402
from pipeline.config.model import proportional_max_size  # noqa: E402

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


# ------------------------------------------------------------------ CPU table (--cpu-table)

BASELINE = "R50 student, PyTorch float32 (SeqNet-style baseline)"


def cpu_modes(args) -> list[tuple[str, str | None, Mode]]:
    """(backbone, checkpoint, mode) rows; the first is the baseline. The last rows are the
    footage settings: fewer proposals (--proposals) and smaller inputs (--small-sizes)."""
    r18, r50 = ("resnet18", args.checkpoint), ("resnet50", args.r50_checkpoint)
    n = args.proposals
    fewer = {"rpn_post_nms_top_n_test": n}

    def small(size):
        return {"min_size": size, "max_size": proportional_max_size(size, 900, 1500), **fewer}
    rows = [(*r50, Mode(BASELINE)),
            (*r50, Mode("R50 student, ONNX Runtime", "onnx")),
            (*r18, Mode("R18 student, PyTorch float32")),
            (*r18, Mode("R18 student, PyTorch bf16", bf16=True)),
            (*r18, Mode("R18 student, ONNX Runtime", "onnx")),
            (*r18, Mode("R18 student, ONNX Runtime int8", "onnx", int8=True)),
            (*r18, Mode(f"R18 student, PyTorch float32, {n} proposals", settings=fewer)),
            (*r18, Mode(f"R18 student, PyTorch bf16, {n} proposals", bf16=True, settings=fewer))]
    rows += [(*r18, Mode(f"R18 student, PyTorch bf16, {n} proposals, input {size}", bf16=True,
                         settings=small(size))) for size in args.small_sizes]
    size = args.small_sizes[len(args.small_sizes) // 2]
    rows += [(*r18, Mode(f"R18 student, PyTorch float32, {n} proposals, input {size}",
                         settings=small(size))),
             (*r18, Mode(f"R18 student, ONNX Runtime, {n} proposals, input {size}", "onnx",
                         settings=small(size))),
             (*r18, Mode(f"R18 student, ONNX Runtime int8, {n} proposals, input {size}", "onnx",
                         int8=True, settings=small(size)))]
    keep = [r for i, r in enumerate(rows)   # the baseline unless skipped: ratios are to it
            if (i == 0 and not args.skip_baseline)
            or (i > 0 and (not args.only or any(k in r[2].label for k in args.only)))]
    return keep


def thread_counts(spec: list[str]) -> list[int]:
    counts = [os.cpu_count() if t == "all" else int(t) for t in spec]
    return sorted(set(counts), key=counts.index)


def build_runners(args, rows, frames, workdir: Path) -> dict:
    """label -> runner. A random-weight R50 keeps every proposal as a candidate and is capped
    at the trained R18's detections per frame, so its embedding work matches a trained one."""
    base = published_settings()
    scale = people_scale(args.checkpoint, args.data_root)
    calibration = mosaic_frames(args.data_root, 2, tile_scale=scale, tiles=args.tiles, seed=1,
                                split="train") if any(m.int8 for _, _, m in rows) else None
    runners = {m.label: runner(ckpt, backbone, m, base, workdir, calibration)
               for backbone, ckpt, m in rows if backbone == "resnet18" or ckpt}
    if all(label in runners for label in (m.label for _, _, m in rows)):
        return runners
    first_r18 = next(m.label for backbone, _, m in rows if backbone == "resnet18")
    r18_dets = statistics.mean(len(o["boxes"]) for o in runners[first_r18].detect(frames[:2]))
    cap = {"det_detections_per_img": max(1, round(r18_dets)), "det_score_thresh": -1.0}
    for backbone, ckpt, m in rows:
        if m.label not in runners:
            runners[m.label] = runner(ckpt, backbone, m, {**base, **cap}, workdir)
    return runners


def time_modes(args, rows, runners, frames, threads) -> tuple[dict, dict, dict, list]:
    """Every mode on every frame at every thread count, round after round; -> per (label,
    threads) wall and CPU seconds, per label detection counts, and the load seen each round."""
    wall = {(m.label, t): [] for _, _, m in rows for t in threads}
    cpu, dets, loads = copy.deepcopy(wall), {}, []
    for it in range(args.warmup + args.iters):
        for frame in frames:
            for (_, _, mode), t in ((r, t) for r in rows for t in threads):
                torch.set_num_threads(t)
                t0, c0 = time.perf_counter(), time.process_time()
                out = runners[mode.label].detect([frame], threads=t)[0]
                if it >= args.warmup:
                    wall[(mode.label, t)].append(time.perf_counter() - t0)
                    cpu[(mode.label, t)].append(time.process_time() - c0)
                    dets.setdefault(mode.label, []).append(len(out["boxes"]))
        loads.append(os.getloadavg()[0])
        print(f"  round {it + 1}/{args.warmup + args.iters} done, load {loads[-1]:.2f}",
              flush=True)
    return wall, cpu, dets, loads


def cpu_table(args) -> tuple[str, list]:
    """Interleaved frames/s of every mode at every thread count; -> (markdown, loads)."""
    scale = people_scale(args.checkpoint, args.data_root)
    frames = mosaic_frames(args.data_root, args.frames, tile_scale=scale, tiles=args.tiles)
    threads, rows = thread_counts(args.threads), cpu_modes(args)
    with temporary_workdir() as workdir:
        runners = build_runners(args, rows, frames, Path(workdir))
        wall, cpu, dets, loads = time_modes(args, rows, runners, frames, threads)
    fps = {k: 1.0 / statistics.median(v) for k, v in wall.items()}
    head = "| mode | detections/frame | " + " | ".join(
        f"{t} threads: frames/s | x baseline | CPU s/frame" for t in threads) + " |"
    lines = [head, "|---|---|" + "---|---|---|" * len(threads)]
    ratio = lambda label, t: f"{fps[(label, t)] / fps[(BASELINE, t)]:.2f}x" \
        if (BASELINE, t) in fps else "-"
    for _, _, m in rows:
        cells = [f"{fps[(m.label, t)]:.3f} | {ratio(m.label, t)} | "
                 f"{statistics.median(cpu[(m.label, t)]):.2f}" for t in threads]
        lines.append(f"| {m.label} | {statistics.mean(dets[m.label]):.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines), loads


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
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations (default 10; --cpu-table: rounds over the frames, 2)")
    p.add_argument("--modes", nargs="+",
                   default=["float32", "bf16", "bf16+channels_last", "bf16+compile"])
    p.add_argument("--quick", action="store_true", help="small frames and few iterations (CPU)")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--cpu-table", action="store_true",
                   help="CPU: PyTorch vs ONNX Runtime, R18 / R50 students vs the baseline")
    p.add_argument("--r50-checkpoint", default=None, help="--cpu-table: trained R50 weights")
    p.add_argument("--data-root", default="work/data/synthetic-prw",
                   help="--cpu-table: synthetic PRW world whose test scenes make the frames")
    p.add_argument("--frames", type=int, default=3, help="--cpu-table: distinct frames")
    p.add_argument("--tiles", type=int, default=6, help="--cpu-table: scenes per frame")
    p.add_argument("--warmup", type=int, default=1, help="--cpu-table: untimed rounds")
    p.add_argument("--threads", nargs="+", default=["2", "all"],
                   help="--cpu-table: thread counts ('all' = every core)")
    p.add_argument("--proposals", type=int, default=100,
                   help="--cpu-table: proposals kept in the fewer-proposals modes")
    p.add_argument("--small-sizes", type=int, nargs="+", default=[750, 600, 450],
                   help="--cpu-table: shorter sides of the small-input modes")
    p.add_argument("--only", nargs="+", default=None,
                   help="--cpu-table: modes whose label contains one of these")
    p.add_argument("--skip-baseline", action="store_true",
                   help="--cpu-table: leave the R50 baseline out (time the --only modes alone)")
    args = p.parse_args()
    if args.cpu_table:
        args.iters = args.iters or 2
        return cpu_table_main(args)
    args.iters = args.iters or 10
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


def cpu_table_main(args) -> None:
    if not args.checkpoint:
        raise SystemExit("--cpu-table needs --checkpoint (a trained R18 student)")
    print(f"# {machine('cpu')}\n# load average before: {os.getloadavg()[0]:.2f}", flush=True)
    table, loads = cpu_table(args)
    print("\n" + table)
    if args.record:
        r50 = args.r50_checkpoint or "random weights, detections capped at the R18's count"
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## CPU inference on full-size frames: PyTorch vs ONNX Runtime\n\n"
                    f"- machine: {machine('cpu')}\n- command: `python bench/bench_inference.py "
                    f"{' '.join(sys.argv[1:])}`\n- date: {datetime.date.today()}\n"
                    f"- load average (1 min) after each round: "
                    f"{', '.join(f'{x:.2f}' for x in loads)}\n"
                    f"- R18: {args.checkpoint}; R50: {r50}\n\n"
                    f"{table}\n")


if __name__ == "__main__":
    main()
