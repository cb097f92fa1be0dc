"""What ``cli.py evaluate`` does with a results file: table, JSON, per-query CSV, pictures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import pandas as pd

from pipeline.benchmark.evaluator import SearchEvaluation, SearchEvaluator
from pipeline.benchmark.pictures import plot_cmc, plot_query
from pipeline.benchmark.results_file import read_results

METRIC_KEYS = ("mAP", "top1", "top5", "top10", "det_ap", "det_recall")


def format_table(metrics: dict) -> str:
    """Markdown table of the metrics (percent) and the settings."""
    head = "| " + " | ".join(METRIC_KEYS) + " |"
    row = "| " + " | ".join(f"{100 * metrics[k]:.2f}" for k in METRIC_KEYS) + " |"
    keys = ("dataset", "gallery_size", "multi_view", "det_thresh", "boxes", "cbgm", "cbgm_k1",
            "cbgm_k2", "cbgm_context", "index", "approximate", "num_queries")
    settings = ", ".join(f"{k}={metrics[k]}" for k in keys if k in metrics)
    return "\n".join([head, "|" + "---|" * len(METRIC_KEYS), row, settings])


def write_per_query(path, data, ev: SearchEvaluation):
    """CSV, one row per query: query (index), image, pid, ap, first_correct_rank (1-based: 1 =
    the top hit is correct; -1 when no correct hit), count_gt, count_tp."""
    rank = np.where(ev.first_rank >= 0, ev.first_rank + 1, -1).astype(np.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"query": np.arange(len(ev.ap)), "image": [q.image for q in data.queries],
                  "pid": [q.pid for q in data.queries], "ap": ev.ap,
                  "first_correct_rank": rank, "count_gt": ev.count_gt,
                  "count_tp": ev.count_tp}).to_csv(path, index=False)


def write_pictures(evaluator: SearchEvaluator, ev: SearchEvaluation, count: int, out_dir):
    """``count`` query pictures (evenly spread over the queries) and cmc.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = evaluator.data
    paths = {r.name: r.path for r in (*data.gallery, *data.train)}
    picks = np.unique(np.linspace(0, len(data.queries) - 1, count).astype(int)) if count else []
    for q in picks:
        hits = [{**h, "path": data.gallery[h["image"]].path} for h in evaluator.top_hits(int(q))]
        query = data.queries[q]
        plot_query(out_dir / f"query_{q:05d}.png", paths.get(query.image, ""), query.box, hits)
    plot_cmc(out_dir / "cmc.png", ev.cmc)


def default_out_dir(json_path=None) -> Path:
    """Where pictures and a model's results file go unless told: beside --json, else ./eval."""
    return Path(json_path).parent if json_path else Path("eval")


def evaluate_command(data, results_path, *, gallery_size, multi_view, det_thresh, index,
                     json_path=None, per_query=None, visualize=0, out_dir=None,
                     boxes="published", cbgm=False, cbgm_k1=None, cbgm_k2=None):
    """Evaluate a results file; writes the requested outputs; -> (table text, metrics)."""
    out_dir = default_out_dir(json_path) if out_dir is None else Path(out_dir)
    results = read_results(results_path, data)
    evaluator = SearchEvaluator(data, gallery_size=gallery_size, multi_view=multi_view,
                                det_thresh=det_thresh, index=index, boxes=boxes, cbgm=cbgm,
                                cbgm_k1=cbgm_k1, cbgm_k2=cbgm_k2)
    evaluator.process(results)
    ev = evaluator.evaluate()
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(ev.metrics, indent=2))
    if per_query:
        write_per_query(per_query, data, ev)
    if visualize:
        write_pictures(evaluator, ev, visualize, out_dir)
    return format_table(ev.metrics), ev.metrics
