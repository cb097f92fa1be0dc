"""PRW (Zheng et al., CVPR 2017) as released: reader and the matching annotation writer.

Layout (see shared/docs/datasets.md): frames/<name>.jpg, annotations/<name>.jpg.mat holding
one of box_new / anno_file / anno_previous as (N, 5) rows [pid, x, y, w, h],
frame_train.mat / frame_test.mat name lists, query_info.txt, ID_train.mat / ID_test.mat.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from .image_files import image_size
from .matfile import cell_strings, load_mat, numbers
from .published_boxes import prw_frame_boxes, prw_query_box
from .records import (UNLABELED, DatasetError, ImageRecord, PersonSearchData, QueryRecord)

ANNOTATION_VARIABLES = ("box_new", "anno_file", "anno_previous")
PRW_UNLABELED = -2            # the release's pid for a person without identity
FRAME_NAME = re.compile(r"^c(\d+)")  # c{camera}s{sequence}_{frame:06d}


def frame_stem(name: str) -> str:
    """'c1s1_000151.jpg' or 'c1s1_000151' -> 'c1s1_000151'."""
    return name[:-4] if name.lower().endswith(".jpg") else name


def camera_of(name: str, where: str = "") -> int:
    match = FRAME_NAME.match(frame_stem(name))
    if not match:
        raise DatasetError(f"{where or name}: frame name {name!r} does not start with c<camera>")
    return int(match.group(1))


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += out[:, :2]
    return out


def clip_xy_at_zero(xywh: np.ndarray) -> np.ndarray:
    """PRW's rows hold slightly negative x, y: clip them at 0, keeping w and h (the convention
    of the released evaluation code, applied before converting to corners)."""
    out = np.asarray(xywh, dtype=np.float64).reshape(-1, 4).copy()
    out[:, :2] = out[:, :2].clip(min=0)
    return out


def check_inside(xyxy: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Refuse boxes that lie wholly outside their image; return the boxes unchanged."""
    outside = (xyxy[:, 0] >= width) | (xyxy[:, 1] >= height) | (xyxy[:, 2] <= 0) | (xyxy[:, 3] <= 0)
    if outside.any():
        box = xyxy[np.argmax(outside)].tolist()
        raise DatasetError(f"{where}: box {box} (x1, y1, x2, y2) lies outside the "
                           f"{width}x{height} image")
    return xyxy


def read_annotation(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(boxes xywh (N,4) float64, pids (N,) int64 with UNLABELED) of one frame's .mat."""
    raw = load_mat(path, ANNOTATION_VARIABLES)
    values = numbers(raw, str(path)) if raw.dtype == object else np.asarray(raw, np.float64)
    if values.size == 0:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    if values.ndim != 2 or values.shape[1] != 5:
        if values.size % 5 == 0 and values.ndim == 1:
            values = values.reshape(-1, 5)
        else:
            raise DatasetError(f"{path}: annotation must be (N, 5) rows [pid, x, y, w, h], "
                               f"got shape {np.shape(raw)}")
    if not np.all(np.isfinite(values)):
        raise DatasetError(f"{path}: annotation holds non-finite numbers")
    pids = values[:, 0].astype(np.int64)
    pids[pids == PRW_UNLABELED] = UNLABELED
    return values[:, 1:5], pids


def read_frame(root: Path, stem: str) -> ImageRecord:
    # one path join each: thousands of frames are read per dataset, and pathlib is slow
    image_path, ann_path = root / f"frames/{stem}.jpg", f"{root}/annotations/{stem}.jpg.mat"
    xywh, pids = read_annotation(ann_path)
    width, height = image_size(image_path)
    boxes = check_inside(xywh_to_xyxy(clip_xy_at_zero(xywh)), width, height, ann_path)
    return ImageRecord(name=f"{stem}.jpg", path=image_path, width=width, height=height,
                       boxes=boxes.astype(np.float32), pids=pids,
                       camera=camera_of(stem, ann_path),
                       published_boxes=prw_frame_boxes(xywh))


def read_frame_list(path: Path, variable: str) -> list[str]:
    return [frame_stem(n) for n in cell_strings(load_mat(path, variable), f"{path}:{variable}")]


def read_identity_list(path: Path, variable: str) -> np.ndarray:
    """(K,) int64 identities of ID_train.mat (``ID_train``) or ID_test.mat (``ID_test2``).

    Informational only: the readers take identities from the annotations."""
    values = numbers(load_mat(path, variable), f"{path}:{variable}")
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise DatasetError(f"{path}: {variable} must hold integer identities")
    return values.astype(np.int64)


def read_queries(path: Path, test_frames: dict[str, ImageRecord]) -> list[QueryRecord]:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    queries = []
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # handles \r\n
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 6:
            raise DatasetError(f"{where}: expected 'pid x y w h frame', got {line.strip()!r}")
        try:
            pid = int(float(fields[0]))
            xywh = np.array([float(v) for v in fields[1:5]])
        except ValueError:
            raise DatasetError(f"{where}: pid and box must be numbers: {line.strip()!r}") from None
        stem = frame_stem(fields[5])
        frame = test_frames.get(stem)
        if frame is None:
            raise DatasetError(f"{where}: query frame {stem!r} is not in the test split")
        box = check_inside(xywh_to_xyxy(clip_xy_at_zero(xywh)), frame.width, frame.height,
                           where)[0]
        queries.append(QueryRecord(image=frame.name, box=box.astype(np.float32), pid=pid,
                                   camera=frame.camera, published_box=prw_query_box(xywh)))
    return queries


def read_prw(root: str | Path, *, train: bool = True) -> PersonSearchData:
    """Read a PRW release rooted at ``root`` (the folder holding frames/ and annotations/);
    ``train=False``: the training frames are not read (``train`` is empty)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: PRW root folder does not exist")
    train_names = read_frame_list(root / "frame_train.mat", "img_index_train")
    test_names = read_frame_list(root / "frame_test.mat", "img_index_test")
    overlap = set(train_names) & set(test_names)
    if overlap:
        raise DatasetError(f"{root}: frames in both train and test lists, e.g. {sorted(overlap)[:3]}")
    train = [read_frame(root, n) for n in train_names] if train else []
    gallery = [read_frame(root, n) for n in test_names]
    queries = read_queries(root / "query_info.txt", {frame_stem(r.name): r for r in gallery})
    return PersonSearchData(dataset="prw", root=root, train=train, gallery=gallery,
                            queries=queries)


# ------------------------------------------------------------------------------ writing

def _name_cell(names: list[str]) -> np.ndarray:
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = n
    return cell


def _annotation_rows(record: ImageRecord) -> np.ndarray:
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    pids = np.where(record.pids == UNLABELED, PRW_UNLABELED, record.pids).astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return np.concatenate([pids[:, None], xywh], axis=1).reshape(-1, 5)


def _format_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_prw_annotations(root: str | Path, train: list[ImageRecord], test: list[ImageRecord],
                          queries: list[QueryRecord]) -> None:
    """Write PRW's annotation files for records whose frames lie in root/frames/.

    Pids of UNLABELED are written as -2, boxes as [x, y, w, h]; query_info.txt gets Windows
    line ends and single spaces, as the release has them."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for record in [*train, *test]:
        scipy.io.savemat(root / "annotations" / f"{frame_stem(record.name)}.jpg.mat",
                         {"box_new": _annotation_rows(record)})
    scipy.io.savemat(root / "frame_train.mat",
                     {"img_index_train": _name_cell([frame_stem(r.name) for r in train])})
    scipy.io.savemat(root / "frame_test.mat",
                     {"img_index_test": _name_cell([frame_stem(r.name) for r in test])})
    ids = lambda recs: np.unique(np.concatenate([r.pids[r.pids != UNLABELED] for r in recs] or
                                                [np.zeros(0, np.int64)]))
    scipy.io.savemat(root / "ID_train.mat", {"ID_train": ids(train).astype(np.float64)[None]})
    scipy.io.savemat(root / "ID_test.mat", {"ID_test2": ids(test).astype(np.float64)[None]})
    lines = []
    for q in queries:
        x1, y1, x2, y2 = (float(v) for v in q.box)
        fields = [q.pid, x1, y1, x2 - x1, y2 - y1]
        lines.append(" ".join(_format_number(v) for v in fields) + " " + frame_stem(q.image))
    with open(root / "query_info.txt", "w", newline="") as f:
        f.write("".join(line + "\r\n" for line in lines))
