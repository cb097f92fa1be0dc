#!/usr/bin/env python
"""Where the teacher-student gap is: detection or Re-ID. Every student is scored with its own
two halves, with the teacher's detector under its own Re-ID (its embeddings of the teacher's
boxes) and with its detector under the teacher's Re-ID (the teacher's embeddings of its boxes),
beside the teacher itself. Search mAP of (teacher detector, student Re-ID) well above the
student's own says its detector holds it back; (student detector, teacher Re-ID) well above
says its Re-ID does. Detection AP follows the detector alone.

    .venv/bin/python bench/bench_halves.py --teacher-config work/worlds/W/teacher.yaml \\
        "fixed=work/worlds/W/ablation/runs/KEY/checkpoint_last.pt" [NAME=CHECKPOINT ...]

Dataset and root come from the teacher config; the test split is scored with the standard
protocol (`cli.py evaluate`'s defaults), whole-pixel query boxes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.benchmark.command import evaluate_command  # noqa: E402
from pipeline.benchmark.run import run_searcher  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.config.teacher import TeacherConfig  # noqa: E402
from pipeline.data import read_dataset  # noqa: E402
from pipeline.runtime.loading import load_searcher  # noqa: E402


class Halves:
    """A searcher that finds people with ``detector`` and embeds them with ``reid``."""

    def __init__(self, detector, reid):
        self.detector, self.reid = detector, reid
        self.embedding_dim = reid.embedding_dim

    def detect(self, images):
        found = self.detector.detect(images)
        embs = self.reid.embed_boxes(images, [f["boxes"] for f in found])
        return [{**f, "embeddings": e} for f, e in zip(found, embs)]

    def embed_boxes(self, images, boxes):
        return self.reid.embed_boxes(images, boxes)


def score(searcher, data, workdir: Path, name: str) -> dict:
    """Search mAP / top-1 / detection AP / recall (percent) of ``searcher`` on ``data``."""
    results = run_searcher(searcher, data, workdir / f"{name}.h5", device="cpu", progress=False)
    _, metrics = evaluate_command(data, results, gallery_size=None, multi_view=False,
                                  det_thresh=0.5, index="flat", out_dir=workdir)
    return {k: 100 * metrics[k] for k in ("mAP", "top1", "det_ap", "det_recall")}


def rows(teacher, students: dict, data, workdir: Path):
    """Yield (detector, Re-ID, scores): the teacher, then per student its own and both swaps."""
    yield "teacher", "teacher", score(teacher, data, workdir, "teacher")
    for name, student in students.items():
        for det_name, reid_name, det, reid in ((name, name, student, student),
                                               ("teacher", name, teacher, student),
                                               (name, "teacher", student, teacher)):
            searcher = det if det is reid else Halves(det, reid)
            yield det_name, reid_name, score(searcher, data, workdir, f"{det_name}-{reid_name}")


def named_checkpoint(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=CHECKPOINT (an existing file)")
    return name, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-config", required=True, help="the world's teacher YAML")
    ap.add_argument("students", nargs="+", type=named_checkpoint, help="NAME=CHECKPOINT")
    ap.add_argument("--proposals", type=int, default=None,
                    help="RPN proposals each student scores per image (default: its config's)")
    args = ap.parse_args()
    cfg = load_config(args.teacher_config, TeacherConfig)
    data = read_dataset(cfg.data.dataset, str(cfg.data.root), train=False)
    teacher = load_searcher(args.teacher_config, "teacher")
    students = {name: load_searcher(path, "student") for name, path in args.students}
    for student in students.values() if args.proposals else ():
        student.set_proposals(args.proposals)
    print("| detector | Re-ID | search mAP | top-1 | det AP | det recall |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for det_name, reid_name, s in rows(teacher, students, data, Path(tmp)):
            print(f"| {det_name} | {reid_name} | {s['mAP']:.2f} | {s['top1']:.2f} | "
                  f"{s['det_ap']:.2f} | {s['det_recall']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
