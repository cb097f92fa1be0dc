"""CUHK-SYSU (Xiao et al., CVPR 2017) as released: reader and the matching annotation writer.

Layout (see shared/docs/datasets.md): Image/SSM/<name>.jpg; annotation/Images.mat (Img),
annotation/pool.mat (pool), annotation/test/train_test/Train.mat (Train) and TestG{N}.mat.
Identities are not in Images.mat: a box is labeled by exact match of its four stored numbers
against Train.mat (identity k+1 for cell k) or TestG50.mat (q+1 for query q).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .image_files import image_size
from .matfile import as_string, cell_strings, field, load_mat, numbers, struct_items, xywh
from .prw import check_inside, xywh_to_xyxy
from .published_boxes import cuhk_boxes
from .records import (UNLABELED, DatasetError, ImageRecord, PersonSearchData, QueryGallery,
                      QueryRecord)

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
LABELING_GALLERY = 50  # TestG50 defines the test identities (the standard protocol)


def image_name(name: str) -> str:
    """Names as Image/SSM holds them: 's1' and 's1.jpg' both -> 's1.jpg'."""
    return name if "." in name else f"{name}.jpg"


def _key(box_xywh) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in box_xywh)


def _paths(root: Path) -> dict[str, Path]:
    ann = root / "annotation"
    return {"images": ann / "Images.mat", "pool": ann / "pool.mat",
            "train": ann / "test" / "train_test" / "Train.mat",
            "test": ann / "test" / "train_test"}


def read_images_mat(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """[(image name, [x, y, w, h] boxes with positive size)] in file order."""
    out = []
    for i, rec in enumerate(struct_items(load_mat(path, "Img"), f"{path}:Img")):
        where = f"{path}: Img[{i}]"
        name = image_name(as_string(field(rec, "imname", where), f"{where}.imname"))
        boxes = []
        box_field = field(rec, "box", where)
        items = struct_items(box_field, f"{where}.box") if np.size(box_field) else []
        for j, b in enumerate(items):
            v = xywh(field(b, "idlocate", f"{where}.box[{j}]"), f"{where}.box[{j}].idlocate",
                     allow_empty=True)
            if v is not None and v[2] > 0 and v[3] > 0:  # the release has zero-size boxes: drop them
                boxes.append(v)
        out.append((name, boxes))
    return out


def read_train_identities(path: Path) -> dict[tuple[str, tuple], int]:
    """(image name, exact xywh) -> identity k+1 for cell k of Train.mat."""
    labels = {}
    for k, person in enumerate(_train_people(path)):
        where = f"{path}: Train[{k}]"
        for j, scene in enumerate(struct_items(field(person, "scene", where), f"{where}.scene")):
            at = f"{where}.scene[{j}]"
            name = image_name(as_string(field(scene, "imname", at), f"{at}.imname"))
            labels[(name, _key(xywh(field(scene, "idlocate", at), f"{at}.idlocate")))] = k + 1
    return labels


def _train_people(path: Path) -> list:
    """One struct per identity: the (K,1) cell of 1x1 structs (or a plain struct array)."""
    cells = load_mat(path, "Train")
    if cells.dtype.names is not None:
        return struct_items(cells, f"{path}:Train")
    people = []
    for k, cell in enumerate(cells.reshape(-1)):
        person = struct_items(cell, f"{path}: Train[{k}]")
        if len(person) != 1:
            raise DatasetError(f"{path}: Train[{k}]: expected one struct per cell, "
                               f"got {len(person)}")
        people.append(person[0])
    return people


def read_protocol(path: Path, variable: str):
    """[(query (name, xywh), [(gallery name, xywh or None), ...])] of one TestG{N}.mat."""
    entries = []
    for q, rec in enumerate(struct_items(load_mat(path, variable), f"{path}:{variable}")):
        where = f"{path}: {variable}[{q}]"
        query = struct_items(field(rec, "Query", where), f"{where}.Query")
        if len(query) != 1:
            raise DatasetError(f"{where}.Query: expected one struct, got {len(query)}")
        qname = image_name(as_string(field(query[0], "imname", f"{where}.Query"),
                                     f"{where}.Query.imname"))
        qbox = xywh(field(query[0], "idlocate", f"{where}.Query"), f"{where}.Query.idlocate")
        gallery = []
        for g, item in enumerate(struct_items(field(rec, "Gallery", where), f"{where}.Gallery")):
            at = f"{where}.Gallery[{g}]"
            gallery.append((image_name(as_string(field(item, "imname", at), f"{at}.imname")),
                            xywh(field(item, "idlocate", at), f"{at}.idlocate", allow_empty=True)))
        entries.append(((qname, qbox), gallery))
    return entries


def _records(root: Path, images, names: list[str], labels: dict, mat_path: Path):
    by_name = dict(images)
    records = []
    for name in names:
        boxes = by_name[name]
        image_path = root / "Image" / "SSM" / name
        width, height = image_size(image_path)
        xywh_arr = np.array(boxes, np.float64).reshape(-1, 4)
        pids = np.array([labels.get((name, _key(b)), UNLABELED) for b in xywh_arr], np.int64)
        xyxy = check_inside(xywh_to_xyxy(xywh_arr), width, height, f"{mat_path} ({name})")
        records.append(ImageRecord(name=name, path=image_path, width=width, height=height,
                                   boxes=xyxy.astype(np.float32), pids=pids, camera=None,
                                   published_boxes=cuhk_boxes(xywh_arr)))
    return records


def _galleries(protocol, n: int, path: Path, queries_ref) -> list[QueryGallery]:
    if len(protocol) != len(queries_ref):
        raise DatasetError(f"{path}: {len(protocol)} queries, but TestG{LABELING_GALLERY}.mat has "
                           f"{len(queries_ref)}; the protocol files must share one query list")
    out = []
    for q, ((qname, qbox), gallery) in enumerate(protocol):
        ref_name, ref_box = queries_ref[q]
        if qname != ref_name or _key(qbox) != _key(ref_box):
            raise DatasetError(f"{path}: query {q} ({qname}) differs from TestG{LABELING_GALLERY}"
                               f"'s query {q} ({ref_name})")
        boxes = np.full((len(gallery), 4), np.nan, np.float32)
        xywh_rows = np.full((len(gallery), 4), np.nan)
        for g, (_, box) in enumerate(gallery):
            if box is not None:
                boxes[g] = xywh_to_xyxy(box)[0]
                xywh_rows[g] = box
        out.append(QueryGallery(images=tuple(name for name, _ in gallery), boxes=boxes,
                                published_boxes=cuhk_boxes(xywh_rows)))
    return out


def read_cuhk_sysu(root: str | Path, *, train: bool = True) -> PersonSearchData:
    """Read a CUHK-SYSU release rooted at ``root`` (the folder holding Image/ and annotation/);
    ``train=False``: the training images and Train.mat are not read (``train`` is empty)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: CUHK-SYSU root folder does not exist")
    paths = _paths(root)
    images = read_images_mat(paths["images"])
    known = {name for name, _ in images}
    pool = [image_name(n) for n in
            cell_strings(load_mat(paths["pool"], "pool"), f"{paths['pool']}:pool")]
    unknown = [n for n in pool if n not in known]
    if unknown:
        raise DatasetError(f"{paths['pool']}: {len(unknown)} pool images are not in Images.mat, "
                           f"e.g. {unknown[:3]}")
    pool_set = set(pool)
    train_names = [name for name, _ in images if name not in pool_set]

    labels = read_train_identities(paths["train"]) if train else {}
    g50_path = paths["test"] / f"TestG{LABELING_GALLERY}.mat"
    if not g50_path.is_file():
        raise DatasetError(f"{g50_path}: file is missing (it defines the test identities)")
    protocols = {n: read_protocol(paths["test"] / f"TestG{n}.mat", f"TestG{n}")
                 for n in GALLERY_SIZES if (paths["test"] / f"TestG{n}.mat").is_file()}
    test_labels, queries_ref = {}, []
    for q, ((qname, qbox), gallery) in enumerate(protocols[LABELING_GALLERY]):
        if qname not in pool_set:
            raise DatasetError(f"{g50_path}: query {q} image {qname!r} is not in the test pool")
        queries_ref.append((qname, qbox))
        test_labels[(qname, _key(qbox))] = q + 1
        for gname, gbox in gallery:
            if gname not in pool_set:
                raise DatasetError(f"{g50_path}: query {q} gallery image {gname!r} is not in "
                                   "the test pool")
            if gbox is not None:
                test_labels[(gname, _key(gbox))] = q + 1

    train = _records(root, images, train_names, labels, paths["images"]) if train else []
    gallery = _records(root, images, pool, test_labels, paths["images"])
    sizes = {r.name: (r.width, r.height) for r in gallery}
    queries = []
    for q, (qname, qbox) in enumerate(queries_ref):
        w, h = sizes[qname]
        box = check_inside(xywh_to_xyxy(qbox), w, h, f"{g50_path}: query {q}")[0]
        queries.append(QueryRecord(image=qname, box=box.astype(np.float32), pid=q + 1,
                                   published_box=cuhk_boxes(qbox)[0]))
    galleries = {n: _galleries(p, n, paths["test"] / f"TestG{n}.mat", queries_ref)
                 for n, p in protocols.items()}
    return PersonSearchData(dataset="cuhk-sysu", root=root, train=train, gallery=gallery,
                            queries=queries, query_galleries=galleries)


# ------------------------------------------------------------------------------ writing

def _xywh(box_xyxy) -> np.ndarray:
    b = np.asarray(box_xyxy, np.float64).reshape(4)
    return np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]]])


def _struct(rows: list[dict], names: tuple[str, ...]) -> np.ndarray:
    arr = np.zeros((1, len(rows)), dtype=[(n, object) for n in names])
    for i, row in enumerate(rows):
        arr[0, i] = tuple(row[n] for n in names)
    return arr


def _box_struct(boxes_xyxy) -> np.ndarray:
    return _struct([{"idlocate": _xywh(b), "ishard": np.array([[0.0]])} for b in boxes_xyxy],
                   ("idlocate", "ishard"))


def write_cuhk_sysu_annotations(root: str | Path, train: list[ImageRecord],
                                pool: list[ImageRecord], queries: list[QueryRecord],
                                galleries: dict[int, list[QueryGallery]]) -> None:
    """Write CUHK-SYSU's annotation files for records whose images lie in root/Image/SSM/.

    Train identities are numbered by their order in Train.mat (the caller's pids 1..K must be
    contiguous); the test identity of query q is q+1, given by the protocol files."""
    root = Path(root)
    paths = _paths(root)
    paths["test"].mkdir(parents=True, exist_ok=True)
    everything = [*train, *pool]
    img = _struct([{"imname": r.name, "nAppear": np.array([[float(len(r.boxes))]]),
                    "box": _box_struct(r.boxes)} for r in everything], ("imname", "nAppear", "box"))
    scipy.io.savemat(paths["images"], {"Img": img})
    pool_cell = np.empty((len(pool), 1), dtype=object)
    for i, r in enumerate(pool):
        pool_cell[i, 0] = r.name
    scipy.io.savemat(paths["pool"], {"pool": pool_cell})

    identities = sorted({int(p) for r in train for p in r.pids if p != UNLABELED})
    if identities != list(range(1, len(identities) + 1)):
        raise ValueError("CUHK-SYSU training identities must be 1..K (Train.mat cell order)")
    cells = np.empty((len(identities), 1), dtype=object)
    for k, pid in enumerate(identities):
        scenes = [{"imname": r.name, "idlocate": _xywh(b), "ishard": np.array([[0.0]])}
                  for r in train for b, p in zip(r.boxes, r.pids) if p == pid]
        cells[k, 0] = _struct([{"idname": f"p{pid:05d}", "nAppear": np.array([[float(len(scenes))]]),
                                "scene": _struct(scenes, ("imname", "idlocate", "ishard"))}],
                              ("idname", "nAppear", "scene"))
    scipy.io.savemat(paths["train"], {"Train": cells})

    for n, per_query in galleries.items():
        rows = []
        for q, (query, gal) in enumerate(zip(queries, per_query)):
            gallery_rows = [{"imname": name,
                             "idlocate": np.zeros((1, 0)) if np.isnan(box).any() else _xywh(box),
                             "ishard": np.array([[0.0]])}
                            for name, box in zip(gal.images, gal.boxes)]
            rows.append({"Query": _struct([{"imname": query.image, "idlocate": _xywh(query.box),
                                            "ishard": np.array([[0.0]])}],
                                          ("imname", "idlocate", "ishard")),
                         "Gallery": _struct(gallery_rows, ("imname", "idlocate", "ishard"))})
        scipy.io.savemat(paths["test"] / f"TestG{n}.mat", {f"TestG{n}": _struct(rows, ("Query", "Gallery"))})
