"""Where `cli.py evaluate --checkpoint` spends its time: the command run in-process under cProfile.

    .venv/bin/python bench/profile_eval.py --dataset prw --root work/data/synthetic-prw \
        --checkpoint work/runs/student-synthetic-r18-distilled/checkpoint_last.pt --model student

Everything after the options this script knows is handed to `evaluate` unchanged (so
`--runtime onnx`, `--batch-size 4`, ... profile those paths). Prints the wall time and the CPU
time of the whole command (CPU time barely moves when other jobs share the cores; wall time
does), a table of its phases (model loading, image decoding, gallery detection, query
embedding, scoring, pictures; cumulative seconds of the functions that do each), and the
functions that took the most time themselves (cProfile "tottime": torch operators show up by
name, e.g. ``torch.conv2d``). --stats FILE keeps the raw pstats for snakeviz / pstats.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cli  # noqa: E402
import pipeline.benchmark.run as run_module  # noqa: E402

#: phase -> the project function whose cumulative time is the phase's (the outermost call
#: when several project functions share the name, e.g. PersonSearchNet.detect and
#: PersonSearchRoIHeads.detect)
PHASES = {
    "load the model": "load_searcher",
    "export to ONNX (--runtime onnx)": "export_checkpoint",
    "decode images": "load_image",
    "gallery: detect": "detect",
    "queries: embed_boxes (the two-step teacher's detect calls it too)": "embed_boxes",
    "write results file": "write_results",
    "score (evaluate_command)": "evaluate_command",
    "pictures": "write_pictures",
}


def phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per phase, from the project's own functions only."""
    project = str(ROOT)
    return {phase: max((v[3] for (file, _, func), v in stats.stats.items()
                        if func == name and file.startswith(project)
                        and "site-packages" not in file), default=0.0)
            for phase, name in PHASES.items()}


def top_functions(profiler: cProfile.Profile, sort: str, count: int) -> str:
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(sort).print_stats(count)
    lines = buf.getvalue().splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


def flops_per_frame(source: str, model_kind: str, root: str, dataset: str, frames: int,
                    depth: int = 3) -> str:
    """Multiply-adds per gallery frame of the PyTorch model and the modules that spend them
    (torch's FlopCounterMode on ``frames`` gallery frames, detect only)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.data import read_dataset
    from pipeline.data.images import load_image
    from pipeline.runtime.loading import load_searcher
    data = read_dataset(dataset, root)
    images = [load_image(r.path) for r in data.gallery[:frames]]
    searcher = load_searcher(source, model_kind, "cpu")
    counter = FlopCounterMode(display=False, depth=depth)
    with torch.inference_mode(), counter:
        out = searcher.detect(images)
    per_frame = lambda flops: flops / 2 / len(images) / 1e9   # 2 FLOPs per multiply-add
    lines = [f"\n## multiply-adds per frame ({len(images)} gallery frames, "
             f"{sum(len(o['boxes']) for o in out) / len(images):.1f} detections per frame)\n",
             "| module | GMACs/frame | share |", "|---|---|---|"]
    total = counter.get_total_flops()
    for name, counts in sorted(counter.get_flop_counts().items(),
                               key=lambda kv: -sum(kv[1].values()))[:8]:
        flops = sum(counts.values())
        lines.append(f"| {name} | {per_frame(flops):.2f} | {100 * flops / total:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--top", type=int, default=25, help="functions listed")
    p.add_argument("--stats", default=None, help="also write the raw pstats here")
    p.add_argument("--flops", type=int, default=0, metavar="N",
                   help="also count the PyTorch model's multiply-adds on N gallery frames")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="profile evaluate as it would run with bf16 autocast on the CPU too "
                        "(pipeline.models.precision.autocast enables CUDA only)")
    args, evaluate_args = p.parse_known_args()
    if args.cpu_bf16:
        run_module.autocast = lambda device, enabled=True, dtype=torch.bfloat16: \
            torch.autocast(torch.device(device).type, dtype=dtype, enabled=enabled)
    with tempfile.TemporaryDirectory() as tmp:
        if "--out-dir" not in evaluate_args:
            evaluate_args += ["--out-dir", tmp]
        argv = ["evaluate", *evaluate_args]
        profiler = cProfile.Profile()
        start, cpu_start = time.perf_counter(), time.process_time()
        profiler.enable()
        try:
            cli.cli.main(argv, standalone_mode=False)
        finally:
            profiler.disable()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stats = pstats.Stats(profiler)
    if args.stats:
        stats.dump_stats(args.stats)
    load = os.getloadavg()[0]
    bf16 = " (with bf16 autocast on the CPU: --cpu-bf16)" if args.cpu_bf16 else ""
    print(f"\n# python cli.py {' '.join(argv)}{bf16}\n# wall {wall:.1f} s, CPU {cpu:.1f} s (all "
          f"threads; under cProfile), load average {load:.2f} at the end\n")
    print("| phase | seconds |\n|---|---|")
    for phase, seconds in phase_seconds(stats).items():
        print(f"| {phase} | {seconds:.2f} |")
    print(f"\n## top {args.top} functions by own time\n")
    print(top_functions(profiler, "tottime", args.top))
    if args.flops:
        opt = lambda name, default=None: evaluate_args[evaluate_args.index(name) + 1] \
            if name in evaluate_args else default
        teacher = opt("--teacher-config")
        print(flops_per_frame(teacher or opt("--checkpoint"), "teacher" if teacher else "student",
                              opt("--root"), opt("--dataset"), args.flops))


if __name__ == "__main__":
    main()
