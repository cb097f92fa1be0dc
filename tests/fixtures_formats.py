"""Tiny datasets written with raw scipy.io.savemat calls, mimicking the real releases' quirks
(not through our own writers, so reader bugs cannot cancel writer bugs)."""
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

W, H = 160, 120


def save_image(path: Path, w=W, h=H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 30)).save(path)


def cell(names, column=True) -> np.ndarray:
    c = np.empty((len(names), 1) if column else (1, len(names)), dtype=object)
    for i, n in enumerate(names):
        c.flat[i] = n
    return c


def write_raw_prw(root: Path) -> Path:
    """Train: c1s1_000001 (pid 932 and an unlabeled box with negative x), c2s1_000002 (pid 3,
    stored as anno_file). Test: c1s2_000010 (pid 5, -2), c3s1_000011 (pid 5), c2s2_000012
    (no boxes). One query (pid 5 in c1s2_000010), CRLF line ends and a trailing blank line."""
    frames = {"c1s1_000001": ("box_new", [[932, 10, 20, 30, 60], [-2, -3.5, 5, 20, 40]]),
              "c2s1_000002": ("anno_file", [[3, 50, 10, 25, 70]]),
              "c1s2_000010": ("box_new", [[5, 40, 30, 20, 50], [-2, 100, 10, 30, 80]]),
              "c3s1_000011": ("anno_previous", [[5, 60, 20, 22, 55]]),
              "c2s2_000012": ("box_new", np.zeros((0, 5)))}
    for name, (var, rows) in frames.items():
        save_image(root / "frames" / f"{name}.jpg")
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "annotations" / f"{name}.jpg.mat",
                         {var: np.array(rows, np.float64).reshape(-1, 5)})
    scipy.io.savemat(root / "frame_train.mat",
                     {"img_index_train": cell(["c1s1_000001", "c2s1_000002"])})
    scipy.io.savemat(root / "frame_test.mat",
                     {"img_index_test": cell(["c1s2_000010", "c3s1_000011", "c2s2_000012"])})
    scipy.io.savemat(root / "ID_train.mat", {"ID_train": np.array([[3.0, 932.0]])})
    scipy.io.savemat(root / "ID_test.mat", {"ID_test2": np.array([[5.0]])})
    (root / "query_info.txt").write_bytes(b"5 40 30 20 50 c1s2_000010\r\n\r\n")
    return root


def _struct(rows, names, shape=None):
    arr = np.zeros(shape or (1, len(rows)), dtype=[(n, object) for n in names])
    for i, row in enumerate(rows):
        arr.flat[i] = tuple(row[n] for n in names)
    return arr


def _box(x, y, w, h):
    return {"idlocate": np.array([[x, y, w, h]], np.float64), "ishard": np.array([[0.0]])}


POOL = [f"s{i}.jpg" for i in range(3, 104)]   # 101 pool images: room for TestG50 and TestG100


def write_raw_cuhk(root: Path) -> Path:
    """Images s1, s2 (train) and s3..s103 (pool). Train identity 1 in s1 and s2; s1 also has a
    zero-size box (dropped) and an unlabeled box. Query 0: the person at s3 (10,10,20,40),
    present in s4 at (30,5,20,50); the other gallery images carry empty idlocate of shapes
    (1,0) and (0,0) alternately. TestG50 and TestG100 are written."""
    images = {"s1.jpg": [(5, 5, 20, 40), (50, 10, 0, 30), (90, 20, 25, 60)],
              "s2.jpg": [(40, 30, 20, 45)],
              "s3.jpg": [(10, 10, 20, 40)], "s4.jpg": [(30, 5, 20, 50), (70, 5, 20, 50)]}
    for name in POOL[2:]:
        images[name] = [(1, 1, 30, 60)] if name != "s6.jpg" else []
    for name in images:
        save_image(root / "Image" / "SSM" / name)
    img_rows = [{"imname": np.array([n]), "nAppear": np.array([[float(len(b))]]),
                 "box": _struct([_box(*x) for x in b], ("idlocate", "ishard"))}
                for n, b in images.items()]
    ann = root / "annotation"
    (ann / "test" / "train_test").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(ann / "Images.mat", {"Img": _struct(img_rows, ("imname", "nAppear", "box"))})
    scipy.io.savemat(ann / "pool.mat", {"pool": cell(POOL)})
    person = _struct([{"idname": np.array(["p00001"]), "nAppear": np.array([[2.0]]),
                       "scene": _struct([{"imname": np.array(["s1.jpg"]), **_box(5, 5, 20, 40)},
                                         {"imname": np.array(["s2.jpg"]), **_box(40, 30, 20, 45)}],
                                        ("imname", "idlocate", "ishard"))}],
                     ("idname", "nAppear", "scene"), shape=(1, 1))
    scipy.io.savemat(ann / "test" / "train_test" / "Train.mat", {"Train": cell([person])})
    for size in (50, 100):
        gallery = [{"imname": np.array(["s4.jpg"]), **_box(30, 5, 20, 50)}]
        for k, name in enumerate(POOL[2: size + 1]):
            empty = np.zeros((1, 0)) if k % 2 else np.zeros((0, 0))
            gallery.append({"imname": np.array([name]), "idlocate": empty,
                            "ishard": np.array([[0.0]])})
        query = _struct([{"imname": np.array(["s3.jpg"]), **_box(10, 10, 20, 40)}],
                        ("imname", "idlocate", "ishard"), shape=(1, 1))
        rec = _struct([{"Query": query,
                        "Gallery": _struct(gallery, ("imname", "idlocate", "ishard"))}],
                      ("Query", "Gallery"))
        scipy.io.savemat(ann / "test" / "train_test" / f"TestG{size}.mat", {f"TestG{size}": rec})
    return root
