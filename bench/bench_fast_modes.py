"""What each fast inference mode costs in accuracy: search mAP / top-1 / detection AP of one
trained student on the synthetic PRW world, PyTorch float32 vs ONNX Runtime, bf16, int8 (ONNX
Runtime, calibrated on 8 training frames), fewer proposals and smaller input sizes.

    .venv/bin/python bench/bench_fast_modes.py \
        --checkpoint work/runs/student-synthetic-r18-distilled/checkpoint_last.pt [--record]

Sizes and proposal counts are given as fractions of the checkpoint's own (the synthetic
student is trained at 160 px with 100 proposals), so they read across to the published
settings: input 0.67 is 600 of 900 on a 1080p frame, proposals 0.33 is 100 of 300. Speed of the
same modes on full-size frames: `bench_inference.py --cpu-table`.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from cpu_modes import Mode, calibration_images, runner, temporary_workdir  # noqa: E402
from pipeline.data import read_dataset  # noqa: E402
from pipeline.benchmark.command import evaluate_command  # noqa: E402
from pipeline.benchmark.run import run_searcher  # noqa: E402
from pipeline.models.checkpoint import read_checkpoint  # noqa: E402

REFERENCE = "PyTorch float32"


def modes(trained: dict, sizes: list[float], proposal_share: float) -> list[Mode]:
    """The reference first, then each fast mode with settings relative to ``trained`` (ONNX
    Runtime float32 scores as PyTorch float32 does, so the size rows run in PyTorch)."""
    def size(f):
        return {"min_size": round(trained["min_size"] * f),
                "max_size": round(trained["max_size"] * f)}
    count = max(1, round(trained["rpn_post_nms_top_n_test"] * proposal_share))
    fewer = {"rpn_post_nms_top_n_test": count}
    share = f"proposals x{proposal_share:.2f}"
    out = [Mode(REFERENCE), Mode("PyTorch bf16", bf16=True), Mode("ONNX Runtime", "onnx"),
           Mode("ONNX Runtime int8", "onnx", int8=True),
           Mode(f"PyTorch float32, {share} ({count})", settings=fewer),
           Mode(f"PyTorch bf16, {share}", bf16=True, settings=fewer)]
    for f in sizes:
        px = size(f)["min_size"]
        out += [Mode(f"PyTorch float32, input x{f:.2f} ({px} px)", settings=size(f)),
                Mode(f"PyTorch bf16, input x{f:.2f} ({px} px), {share}", bf16=True,
                     settings={**size(f), **fewer})]
    middle = sizes[len(sizes) // 2]
    out.append(Mode(f"ONNX Runtime int8, input x{middle:.2f}, {share}", "onnx", int8=True,
                    settings={**size(middle), **fewer}))
    return out


def evaluate_mode(args, data, mode: Mode, workdir: Path) -> tuple[dict, float]:
    searcher = runner(args.checkpoint, None, mode, {}, workdir,
                      calibration_images(args.root) if mode.int8 else None)
    start = time.perf_counter()
    results = run_searcher(searcher, data, workdir / "results.h5", device="cpu",
                           batch_size=1, progress=False)
    seconds = time.perf_counter() - start
    _, metrics = evaluate_command(data, results, gallery_size=None, multi_view=False,
                                  det_thresh=0.5, index="flat")
    return metrics, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a trained student")
    p.add_argument("--root", default="work/data/synthetic-prw", help="synthetic PRW world")
    p.add_argument("--sizes", type=float, nargs="+", default=[0.83, 0.67, 0.5],
                   help="input sizes as fractions of the trained one")
    p.add_argument("--proposal-share", type=float, default=1 / 3)
    p.add_argument("--only", nargs="+", default=None, help="modes whose label contains these")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    trained = read_checkpoint(args.checkpoint)["model_args"]["model"]
    data = read_dataset("prw", args.root)
    rows = []
    with temporary_workdir() as tmp:
        for mode in modes(trained, args.sizes, args.proposal_share):
            if args.only and mode.label != REFERENCE and not any(k in mode.label
                                                                  for k in args.only):
                continue
            metrics, seconds = evaluate_mode(args, data, mode, Path(tmp))
            rows.append((mode.label, metrics, seconds))
            print(f"  {mode.label:55s} mAP {100 * metrics['mAP']:6.2f}  top-1 "
                  f"{100 * metrics['top1']:6.2f}  det AP {100 * metrics['det_ap']:6.2f}  "
                  f"({seconds:.0f} s)", flush=True)
    ref = rows[0][1]
    lines = ["| mode | mAP | top-1 | det AP | mAP - float32 (points) | run time s |",
             "|---|---|---|---|---|---|"]
    for label, m, seconds in rows:
        lines.append(f"| {label} | {100 * m['mAP']:.2f} | {100 * m['top1']:.2f} | "
                     f"{100 * m['det_ap']:.2f} | {100 * (m['mAP'] - ref['mAP']):+.2f} | "
                     f"{seconds:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.record:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                    if l.startswith("model name")), platform.machine())
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Fast inference modes: accuracy (synthetic PRW world)\n\n"
                    f"- machine: {cpu}, {torch.get_num_threads()} threads, torch "
                    f"{torch.__version__}\n- command: `python bench/bench_fast_modes.py "
                    f"{' '.join(sys.argv[1:])}`\n- date: {datetime.date.today()}\n"
                    f"- trained settings: input {trained['min_size']}/{trained['max_size']}, "
                    f"{trained['rpn_post_nms_top_n_test']} proposals\n\n{table}\n")


if __name__ == "__main__":
    main()
