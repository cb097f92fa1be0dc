"""A dataset at a glance: a per-split summary table and a CSV of every box."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .records import UNLABELED, PersonSearchData

CSV_COLUMNS = ("split", "image", "x1", "y1", "x2", "y2", "pid", "camera")


def split_summary(data: PersonSearchData) -> list[dict]:
    """One row per split: images, boxes, labeled boxes, identities, queries, cameras."""
    rows = []
    for split, records in (("train", data.train), ("gallery", data.gallery)):
        pids = np.concatenate([r.pids for r in records]) if records else np.zeros(0, np.int64)
        cameras = {r.camera for r in records if r.camera is not None}
        rows.append({"split": split, "images": len(records),
                     "boxes": int(sum(len(r.boxes) for r in records)),
                     "labeled boxes": int((pids != UNLABELED).sum()),
                     "identities": len(np.unique(pids[pids != UNLABELED])),
                     "queries": 0, "cameras": len(cameras) or "-"})
    q_cams = {q.camera for q in data.queries if q.camera is not None}
    rows.append({"split": "query", "images": len({q.image for q in data.queries}),
                 "boxes": len(data.queries), "labeled boxes": len(data.queries),
                 "identities": len({q.pid for q in data.queries}),
                 "queries": len(data.queries), "cameras": len(q_cams) or "-"})
    return rows


def format_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths))
    return "\n".join([line(columns), line("-" * w for w in widths),
                      *(line(r[c] for c in columns) for r in rows)])


def _number(v: float) -> str:
    """Shortest exact text of a coordinate: 12 for 12.0, 12.5 for 12.5."""
    if isinstance(v, np.floating):  # shortest text that reads back as the same value
        return np.format_float_positional(v + type(v)(0), trim="-")  # -0 -> 0
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def box_rows(data: PersonSearchData):
    for split, records in (("train", data.train), ("gallery", data.gallery)):
        for r in records:
            for box, pid in zip(r.boxes, r.pids):
                yield (split, r.name, *(_number(v) for v in box), int(pid),
                       "" if r.camera is None else r.camera)
    for q in data.queries:
        yield ("query", q.image, *(_number(v) for v in q.box), int(q.pid),
               "" if q.camera is None else q.camera)


def export_csv(data: PersonSearchData, path: str | Path) -> int:
    """Write every box as ``split,image,x1,y1,x2,y2,pid,camera``; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for row in box_rows(data):
            out.writerow(row)
            count += 1
    return count
