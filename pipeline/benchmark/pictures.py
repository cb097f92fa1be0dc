"""Pictures of search results (matplotlib, Agg): a query crop beside its top-10 gallery hits
(boxes drawn in their frames, green when correct, red otherwise), and the CMC curve."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.image_files import load_rgb
from pipeline.data.records import DatasetError

TOP_HITS = 10


def _image(path):
    try:
        return load_rgb(path)
    except DatasetError:   # a picture of the results is drawn even when one frame is gone
        return np.zeros((64, 64, 3), np.uint8)


def plot_query(out_path, query_image_path, query_box, hits: list[dict]) -> Path:
    """hits: [{"path", "box" (4,), "score", "correct"}] best first (at most 10 drawn)."""
    hits = hits[:TOP_HITS]
    from matplotlib.figure import Figure   # here: matplotlib costs every command 1 s to import
    from matplotlib.patches import Rectangle
    fig = Figure(figsize=(2.2 * (len(hits) + 1), 3))  # no pyplot: no global figure state
    axes = fig.subplots(1, len(hits) + 1, squeeze=False)
    x1, y1, x2, y2 = np.round(np.asarray(query_box)).astype(int)
    axes[0, 0].imshow(_image(query_image_path)[max(y1, 0):y2, max(x1, 0):x2])
    axes[0, 0].set_title("query")
    for ax, h in zip(axes[0, 1:], hits):
        ax.imshow(_image(h["path"]))
        b = np.asarray(h["box"])
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=2,
                                   color="lime" if h["correct"] else "red"))
        ax.set_title(f"{h['score']:.3f}", color="green" if h["correct"] else "red")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    return Path(out_path)


def plot_cmc(out_path, cmc: np.ndarray) -> Path:
    """cmc (K,): fraction of queries with a correct hit within the top k, k = 1..K."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(cmc) + 1), np.asarray(cmc) * 100, marker=".")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(True)
    ax.set_title("CMC")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    return Path(out_path)
