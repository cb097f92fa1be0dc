"""Where `cli.py evaluate --checkpoint` spends its time: the command run in-process under cProfile.

    .venv/bin/python bench/profile_eval.py --dataset prw --root work/data/synthetic-prw \
        --checkpoint work/runs/student-synthetic-r18-all/checkpoint_last.pt --model student

Everything after the options this script knows is handed to `evaluate` unchanged (so
`--runtime onnx`, `--batch-size 4`, ... profile those paths). Prints the wall time of the whole
command, a table of its phases (model loading, image decoding, gallery detection, query
embedding, scoring, pictures; cumulative seconds of the functions that do each), and the
functions that took the most time themselves (cProfile "tottime": torch operators show up by
name, e.g. ``torch.conv2d``). --stats FILE keeps the raw pstats for snakeviz / pstats.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402

#: phase -> (file suffix, function name) whose cumulative time is the phase's
PHASES = {
    "load the model": ("inference/searchers.py", "load_searcher"),
    "decode images": ("data/images.py", "load_image"),
    "gallery: detect": ("", "detect"),
    "queries: embed_boxes": ("", "embed_boxes"),
    "write results file": ("results_file.py", "write_results"),
    "score (evaluate_command)": ("evaluation/command.py", "evaluate_command"),
    "pictures": ("evaluation/command.py", "write_pictures"),
}
LEGACY_LOAD = ("models/__init__.py", "load_searcher")  # before pipeline/inference existed


def phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per phase (the outermost call of each matching function; a function
    matched by name only counts once per file, the largest)."""
    out = {}
    for phase, (suffix, name) in PHASES.items():
        found = [v[3] for (file, _, func), v in stats.stats.items()
                 if func == name and file.replace("\\", "/").endswith(suffix)
                 and "site-packages" not in file]
        if not found and (suffix, name) == PHASES["load the model"]:
            found = [v[3] for (file, _, func), v in stats.stats.items()
                     if func == LEGACY_LOAD[1] and file.endswith(LEGACY_LOAD[0])]
        out[phase] = max(found, default=0.0)
    return out


def top_functions(stats: pstats.Stats, sort: str, count: int) -> str:
    buf = io.StringIO()
    pstats.Stats(stats, stream=buf).strip_dirs().sort_stats(sort).print_stats(count)
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
        start = time.perf_counter()
        profiler.enable()
        try:
            cli.cli.main(argv, standalone_mode=False)
        finally:
            profiler.disable()
        wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    if args.stats:
        stats.dump_stats(args.stats)
    print(f"\n# python cli.py {' '.join(argv)}\n# wall {wall:.1f} s (under cProfile)\n")
    print("| phase | seconds |\n|---|---|")
    for phase, seconds in phase_seconds(stats).items():
        print(f"| {phase} | {seconds:.2f} |")
    print(f"\n## top {args.top} functions by own time\n")
    print(top_functions(stats, "tottime", args.top))


if __name__ == "__main__":
    main()
