#!/usr/bin/env python
"""Search accuracy with and without CBGM (context bipartite graph matching), as papers print it.

Scores results files (``evaluate --checkpoint`` writes one beside its metrics) on one dataset:
without CBGM, with SeqNet's k1/k2 for the dataset, and with any other --k pairs. Prints a
markdown table; --record appends it to BENCHMARKS.md under "## CBGM: with and without".

    python bench/bench_cbgm.py --dataset prw --root work/data/synthetic-prw \\
        teacher=work/runs/teacher-eval/results.h5 \\
        "student R18, distilled=work/runs/student-synthetic-r18-distilled/eval/results.h5" --k 10,3
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_eval import machine, record  # noqa: E402
from pipeline.data import read_dataset  # noqa: E402
from pipeline.benchmark.cbgm import DEFAULT_K  # noqa: E402
from pipeline.benchmark.evaluator import evaluate_search  # noqa: E402
from pipeline.benchmark.results_file import read_results  # noqa: E402

SECTION = "## CBGM: with and without"


def table(data, models: list[tuple[str, Path]], ks: list[tuple[int, int]]) -> str:
    lines = ["| model | CBGM (k1, k2) | mAP | top-1 | top-5 | top-10 | context from |",
             "|---|---|---|---|---|---|---|"]
    for name, path in models:
        results = read_results(path, data)
        for k in [None, *ks]:
            options = {} if k is None else {"cbgm": True, "cbgm_k1": k[0], "cbgm_k2": k[1]}
            m = evaluate_search(data, results, progress=False, **options).metrics
            lines.append(f"| {name} | {'no' if k is None else k} | {100 * m['mAP']:.2f} | "
                         f"{100 * m['top1']:.2f} | {100 * m['top5']:.2f} | "
                         f"{100 * m['top10']:.2f} | {m.get('cbgm_context', '-')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["prw", "cuhk-sysu"], required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("models", nargs="+", help="NAME=RESULTS.h5")
    ap.add_argument("--k", action="append", default=[],
                    help="k1,k2 to try besides SeqNet's defaults (repeatable)")
    ap.add_argument("--record", action="store_true", help="append to BENCHMARKS.md")
    args = ap.parse_args(argv)
    data = read_dataset(args.dataset, args.root, train=False)
    ks = [DEFAULT_K[args.dataset]] + [tuple(int(v) for v in k.split(",")) for k in args.k]
    models = [(m.split("=", 1)[0], Path(m.split("=", 1)[1])) for m in args.models]
    text = table(data, models, ks)
    print(text)
    if args.record:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = " ".join(f'"{a}"' if " " in a else a for a in sys.argv)
        record(ROOT / "BENCHMARKS.md", SECTION,
               f"Machine: {machine()}  \nCommand: `python {command}`  \nDate: {stamp}\n\n{text}\n")


if __name__ == "__main__":
    main()
