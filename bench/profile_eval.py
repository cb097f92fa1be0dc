"""Where `cli.py evaluate --checkpoint` spends its time: the command run in-process under cProfile.

    .venv/bin/python bench/profile_eval.py --dataset prw --root work/data/synthetic-prw \
        --checkpoint work/runs/student-synthetic-r18-all/checkpoint_last.pt --model student

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

import cli  # noqa: E402

#: phase -> the project function whose cumulative time is the phase's (the outermost call
#: when several project functions share the name, e.g. PersonSearchNet.detect and
#: PersonSearchRoIHeads.detect)
PHASES = {
    "load the model": "load_searcher",
    "export to ONNX (--runtime onnx)": "export_checkpoint",
    "decode images": "load_image",
    "gallery: detect": "detect",
    "queries: embed_boxes": "embed_boxes",
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--top", type=int, default=25, help="functions listed")
    p.add_argument("--stats", default=None, help="also write the raw pstats here")
    args, evaluate_args = p.parse_known_args()
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
    print(f"\n# python cli.py {' '.join(argv)}\n# wall {wall:.1f} s, CPU {cpu:.1f} s (all "
          f"threads; under cProfile), load average {load:.2f} at the end\n")
    print("| phase | seconds |\n|---|---|")
    for phase, seconds in phase_seconds(stats).items():
        print(f"| {phase} | {seconds:.2f} |")
    print(f"\n## top {args.top} functions by own time\n")
    print(top_functions(profiler, "tottime", args.top))


if __name__ == "__main__":
    main()
