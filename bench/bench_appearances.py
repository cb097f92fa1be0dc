#!/usr/bin/env python
"""Where else was this person: detection-level vs appearance-level search, on the demo's footage.

For each footage seed (``make-synthetic --format video --seed S``, the demo's parameters; the
demo uses seed 0) this indexes the footage with the demo's distilled student at ``--every``,
links tracks (:mod:`pipeline.footage.tracks`), scores them with py-motmetrics (IDF1, ID
switches, MOTA) and scores cross-camera search (queries: every detection of a walker seen on
another camera; only other cameras may answer; :mod:`pipeline.footage.scoring`):

- detection: today's search (the top detection on another camera is the walker's);
- appearance rows, for each linking (ByteTrack's motion tracks alone; split where the
  embeddings disagree; split and stitched; then tracks of one detection dropped, the default):
  pooling choices, query by the detection or by its track's pooled embedding, with and
  without query expansion and k-reciprocal re-ranking; py-motmetrics' IDF1 / ID switches /
  MOTA per camera and overall.

    .venv/bin/python bench/bench_appearances.py [--seeds 0,1,2] [--every 1] [--out DIR]

Needs the demo's student (``make demo`` / ``python cli.py demo``: work/runs/...). Footage and
galleries land under ``--out`` (work/bench-appearances/) and are reused by a second run.
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
from pipeline.footage.appearances import (DEFAULT_POOLING, POOLINGS, RANKINGS,  # noqa: E402
                                          build_appearances, ranking_scores)
from pipeline.footage.scoring import score_appearances, score_footage, track_metrics  # noqa: E402
from pipeline.footage.store import open_gallery  # noqa: E402
from pipeline.footage.tracks import (adopt_unconfirmed, drop_short_tracks,  # noqa: E402
                                     motion_track_ids, motion_tracks, number_tracks,
                                     split_by_appearance, stitch_fragments)

CLI = [sys.executable, str(ROOT / "cli.py")]
STUDENT = ROOT / "work/runs/student-synthetic-r18-distilled/checkpoint_last.pt"
OUT = ROOT / "work/bench-appearances"
DEFAULT_LINKING = "split+stitch+drop"   # what link_tracks does


def gallery_of(seed: int, every: float, out: Path = OUT) -> tuple[Path, Path]:
    footage, gallery = out / f"footage-{seed}", out / f"gallery-{seed}-every{every:g}"
    if not (footage / ANNOTATIONS).is_file():
        subprocess.run([*CLI, "make-synthetic", "--format", "video", "--out", str(footage),
                        "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    if not (gallery / "gallery.json").is_file():
        subprocess.run([*CLI, "index", "--gallery", str(gallery), "--model", str(STUDENT),
                        str(footage), "--every", str(every), "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
    return footage, gallery


def linkings(gallery, embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """Track ids by each linking step: ByteTrack's motion alone, its unconfirmed detections
    added and split by appearance, split and stitched, then short tracks dropped (what
    :func:`~pipeline.footage.tracks.link_tracks` does)."""
    motion = adopt_unconfirmed(motion_tracks(gallery))
    split = split_by_appearance(motion, embeddings, gallery.scores)
    stitched = stitch_fragments(split, motion, embeddings, gallery.scores,
                                gallery.detection_frame)
    return {"motion": motion_track_ids(gallery),
            "split": number_tracks(split, motion.group_of),
            "split+stitch": number_tracks(stitched, motion.group_of),
            DEFAULT_LINKING: number_tracks(drop_short_tracks(stitched), motion.group_of)}


def measure(seed: int, every: float, out: Path = OUT) -> dict[str, float]:
    footage, gallery_dir = gallery_of(seed, every, out)
    gallery, truth = open_gallery(gallery_dir), read_footage_truth(footage)
    embeddings = gallery.embeddings(np.arange(gallery.num_detections))
    row = {"detection": 100 * score_footage(gallery, truth).cross_camera_top1}
    for linking, track_of in linkings(gallery, embeddings).items():
        tracking = track_metrics(gallery, track_of, truth)
        for camera in [*gallery.cameras, "OVERALL"]:
            where = "" if camera == "OVERALL" else f" {camera}"
            row[f"{linking}: IDF1{where}"] = 100 * tracking.loc[camera, "idf1"]
            row[f"{linking}: ID switches{where}"] = tracking.loc[camera, "num_switches"]
            row[f"{linking}: MOTA{where}"] = 100 * tracking.loc[camera, "mota"]
        row[f"{linking}: appearances"] = int(track_of.max()) + 1
        row.update(search_rows(gallery, embeddings, track_of, truth, linking))
    return row


def search_rows(gallery, embeddings, track_of, truth, linking: str) -> dict[str, float]:
    """Cross-camera appearance top-1 / mAP (and the query count) for each pooling, query and
    ranking; re-ranking and the other poolings only on the default linking."""
    row = {}
    default = linking == DEFAULT_LINKING
    for pooling in POOLINGS if default else (DEFAULT_POOLING,):
        apps = build_appearances(gallery, embeddings, track_of, pooling)
        for query in ("detection", "track"):
            for name in RANKINGS:
                if name != "plain" and not (default and pooling == DEFAULT_POOLING):
                    continue
                s = score_appearances(gallery, apps, truth, pooled_query=query == "track",
                                      rank=lambda q, c: ranking_scores(q, c, name))
                key = f"{linking}: {pooling} / {query} / {name}"
                row[f"{key} top-1"] = 100 * s.top1
                row[f"{key} mAP"] = 100 * s.mean_ap
                row[f"{key} queries"] = s.queries
                row[f"{key} top-1 of every query"] = 100 * s.all_top1
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--every", type=float, default=1.0,
                        help="seconds between indexed frames (the demo's: 1)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"where footage and galleries are made and reused (default {OUT})")
    args = parser.parse_args()
    warnings.simplefilter("ignore")        # motmetrics' pandas deprecation warnings
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {s: measure(s, args.every, args.out) for s in seeds}
    keys = list(rows[seeds[0]])
    print(f"cross-camera search on the demo's footage, --every {args.every:g} s "
          f"(percent; top-1 / mAP per seed and mean)")
    print(f"| measure | {' | '.join(f'seed {s}' for s in seeds)} | mean |")
    print(f"|---|{'---|' * (len(seeds) + 1)}")
    for k in keys:
        values = [rows[s][k] for s in seeds]
        print(f"| {k} | {' | '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} |")


if __name__ == "__main__":
    main()
