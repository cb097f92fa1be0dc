#!/usr/bin/env python
"""Does the "likely the same person" line hold on footage it never saw, and does multi-query help?

Indexes the demo's footage world (``make-synthetic --format video --seed S``) with a
calibrated model (``cli.py calibrate`` wrote ``<model>.calibration.json``), links its tracks
from the stored detections with today's :func:`~pipeline.footage.tracks.link_tracks` (so a
gallery indexed by an older version measures today's tracks), then, for every
detection of a walker seen on another camera (the queries of
:func:`pipeline.footage.scoring.score_appearances`), ranks the appearances of the other
cameras by the detection's embedding and reports:

- precision: the share of appearances above the line that are the walker;
- recall: the share of the walker's appearances on other cameras that are above it;
- cross-camera top-1 of one detection vs a multi query (the mean of 3 detections spread over
  the query's own track: "these crops are the same person").

    .venv/bin/python bench/bench_calibration.py --model work/calib/student.pt [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.data.synthetic.video import ANNOTATIONS, read_footage_truth  # noqa: E402
from pipeline.footage.appearances import build_appearances  # noqa: E402
from pipeline.footage.rerank import multi_query  # noqa: E402
from pipeline.footage.scoring import appearance_labels, walker_detections  # noqa: E402
from pipeline.footage.store import open_gallery  # noqa: E402
from pipeline.runtime.calibration import read_calibration  # noqa: E402

CLI = [sys.executable, str(ROOT / "cli.py")]
MULTI_CROPS = 3


def gallery_of(out: Path, model: str, seed: int, every: float) -> tuple[Path, Path]:
    footage, gallery = out / f"footage-{seed}", out / f"gallery-{seed}-every{every:g}"
    if not (footage / ANNOTATIONS).is_file():
        subprocess.run([*CLI, "make-synthetic", "--format", "video", "--out", str(footage),
                        "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    if not (gallery / "gallery.json").is_file():
        subprocess.run([*CLI, "index", "--gallery", str(gallery), "--model", model,
                        str(footage), "--every", str(every), "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
    return footage, gallery


def measure(out: Path, model: str, seed: int, every: float) -> dict[str, float]:
    footage, gallery_dir = gallery_of(out, model, seed, every)
    gallery, truth = open_gallery(gallery_dir), read_footage_truth(footage)
    calibration, note = read_calibration(gallery.model)
    if calibration is None:
        raise SystemExit(note)
    apps = build_appearances(gallery, gallery.embeddings(np.arange(gallery.num_detections)))
    labels = walker_detections(gallery, truth)
    app_pid = appearance_labels(gallery, apps, labels)
    counts = {"above": 0, "above_right": 0, "right": 0}
    top1 = {"one detection": [], f"multi query ({MULTI_CROPS} crops)": []}
    for det, pid in labels.items():
        camera = gallery.frame_camera_id[int(gallery.detection_frame[det])]
        others = np.flatnonzero(apps.camera != camera)
        right = app_pid[others] == pid
        if not right.any() or apps.track_of[det] < 0:
            continue
        one = gallery.embeddings([det])[0]
        likely = calibration.probability(apps.embeddings[others] @ one) >= calibration.threshold
        counts["above"] += int(likely.sum())
        counts["above_right"] += int((likely & right).sum())
        counts["right"] += int(right.sum())
        own = apps.members[int(apps.track_of[det])]
        spread = own[np.unique(np.linspace(0, len(own) - 1, MULTI_CROPS).round().astype(int))]
        several = multi_query(gallery.embeddings(spread))
        for name, q in zip(top1, (one, several)):
            top1[name].append(bool(right[int(np.argmax(apps.embeddings[others] @ q))]))
    return {"precision above the line": 100 * counts["above_right"] / max(counts["above"], 1),
            "recall above the line": 100 * counts["above_right"] / max(counts["right"], 1),
            **{f"top-1, {k}": 100 * float(np.mean(v)) for k, v in top1.items()},
            "queries": len(top1["one detection"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a calibrated student checkpoint")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--every", type=float, default=0.25)
    parser.add_argument("--out", default=str(ROOT / "work/bench-calibration"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {s: measure(Path(args.out), args.model, s, args.every) for s in seeds}
    print(f"appearance search on the demo's footage, other cameras, --every {args.every:g} s "
          "(percent)")
    print(f"| measure | {' | '.join(f'seed {s}' for s in seeds)} | mean |")
    print(f"|---|{'---|' * (len(seeds) + 1)}")
    for k in rows[seeds[0]]:
        values = [rows[s][k] for s in seeds]
        print(f"| {k} | {' | '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} |")


if __name__ == "__main__":
    main()
