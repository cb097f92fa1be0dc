"""PRW and CUHK-SYSU readers against files shaped like the real releases, their writers, the
clear errors on bad input, and the CSV export."""
import csv

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from cli import cli
from fixtures_formats import POOL, save_image, write_raw_cuhk, write_raw_prw
from pipeline.data import read_dataset
from pipeline.data.cuhk_sysu import read_cuhk_sysu, write_cuhk_sysu_annotations
from pipeline.data.inspect import CSV_COLUMNS, export_csv
from pipeline.data.prw import read_prw, write_prw_annotations
from pipeline.data.records import UNLABELED, DatasetError


@pytest.fixture
def prw(tmp_path):
    return write_raw_prw(tmp_path / "PRW")


@pytest.fixture
def cuhk(tmp_path):
    return write_raw_cuhk(tmp_path / "CUHK-SYSU")


def test_prw_reads_the_release_layout(prw):
    data = read_prw(prw)
    assert [r.name for r in data.train] == ["c1s1_000001.jpg", "c2s1_000002.jpg"]
    first = data.train[0]
    # x, y, w, h -> x1, y1, x2, y2; a negative x is clipped at 0 keeping w; -2 -> UNLABELED
    np.testing.assert_array_equal(first.boxes, [[10, 20, 40, 80], [0, 5, 20, 45]])
    assert first.pids.tolist() == [932, UNLABELED]
    assert (first.camera, data.train[1].camera, first.width, first.height) == (1, 2, 160, 120)
    np.testing.assert_array_equal(data.train[1].boxes, [[50, 10, 75, 80]])   # anno_file
    assert [r.camera for r in data.gallery] == [1, 3, 2]
    assert data.gallery[1].pids.tolist() == [5]                              # anno_previous
    assert data.gallery[2].boxes.shape == (0, 4) and data.gallery[2].pids.shape == (0,)
    assert len(data.queries) == 1                                            # CRLF, blank line
    q = data.queries[0]
    assert (q.image, q.pid, q.camera) == ("c1s2_000010.jpg", 5, 1)
    np.testing.assert_array_equal(q.box, [40, 30, 60, 80])
    assert data.train_identities().tolist() == [3, 932]
    assert data.query_galleries == {}


def test_prw_writer_round_trip(prw, tmp_path):
    data = read_prw(prw)
    out = tmp_path / "copy"
    for r in data.train + data.gallery:
        save_image(out / "frames" / r.name)
    write_prw_annotations(out, data.train, data.gallery, data.queries)
    again = read_prw(out)
    for a, b in zip(data.train + data.gallery, again.train + again.gallery):
        assert (a.name, a.camera) == (b.name, b.camera)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.pids, b.pids)
    np.testing.assert_array_equal(data.queries[0].box, again.queries[0].box)
    assert (out / "query_info.txt").read_bytes().endswith(b"\r\n")
    assert b" " in (out / "query_info.txt").read_bytes() and b"  " not in (out / "query_info.txt").read_bytes()


def test_cuhk_reads_the_release_layout(cuhk):
    data = read_cuhk_sysu(cuhk)
    assert [r.name for r in data.train] == ["s1.jpg", "s2.jpg"]
    s1 = data.train[0]
    # the zero-size box is dropped; the train identity is 1 (cell 0 of Train.mat)
    np.testing.assert_array_equal(s1.boxes, [[5, 5, 25, 45], [90, 20, 115, 80]])
    assert s1.pids.tolist() == [1, UNLABELED] and data.train[1].pids.tolist() == [1]
    assert [r.name for r in data.gallery] == POOL and s1.camera is None
    by_name = {r.name: r for r in data.gallery}
    assert by_name["s3.jpg"].pids.tolist() == [1]            # query 0 -> identity 0 + 1
    assert by_name["s4.jpg"].pids.tolist() == [1, UNLABELED]
    assert by_name["s5.jpg"].pids.tolist() == [UNLABELED]
    assert by_name["s6.jpg"].boxes.shape == (0, 4)
    assert len(data.queries) == 1
    q = data.queries[0]
    assert (q.image, q.pid, q.camera) == ("s3.jpg", 1, None)
    np.testing.assert_array_equal(q.box, [10, 10, 30, 50])
    assert sorted(data.query_galleries) == [50, 100]
    for size, galleries in data.query_galleries.items():
        g = galleries[0]
        assert len(g.images) == size and g.images[0] == "s4.jpg" and "s3.jpg" not in g.images
        np.testing.assert_array_equal(g.boxes[0], [30, 5, 50, 55])
        assert np.isnan(g.boxes[1:]).all()


def test_cuhk_writer_round_trip(cuhk, tmp_path):
    data = read_cuhk_sysu(cuhk)
    out = tmp_path / "copy"
    for r in data.train + data.gallery:
        save_image(out / "Image" / "SSM" / r.name)
    write_cuhk_sysu_annotations(out, data.train, data.gallery, data.queries, data.query_galleries)
    again = read_cuhk_sysu(out)
    for a, b in zip(data.train + data.gallery, again.train + again.gallery):
        assert a.name == b.name
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.pids, b.pids)
    for size in data.query_galleries:
        a, b = data.query_galleries[size][0], again.query_galleries[size][0]
        assert a.images == b.images
        np.testing.assert_array_equal(a.boxes, b.boxes)


def _rewrite(path, variable, value):
    scipy.io.savemat(path, {variable: value})


@pytest.mark.parametrize("damage, file_part, words", [
    (lambda r: (r / "frame_test.mat").unlink(), "frame_test.mat", "missing"),
    (lambda r: _rewrite(r / "annotations/c1s1_000001.jpg.mat", "boxes", np.zeros((1, 5))),
     "c1s1_000001.jpg.mat", "box_new or anno_file or anno_previous"),
    (lambda r: _rewrite(r / "annotations/c1s1_000001.jpg.mat", "box_new", np.zeros((2, 4))),
     "c1s1_000001.jpg.mat", "(N, 5)"),
    (lambda r: _rewrite(r / "annotations/c1s1_000001.jpg.mat", "box_new",
                        np.array([[1.0, 500, 10, 20, 30]])), "c1s1_000001.jpg.mat", "outside"),
    (lambda r: (r / "frames/c2s1_000002.jpg").write_bytes(b"not a jpeg"), "c2s1_000002.jpg",
     "does not decode"),
    (lambda r: (r / "frames/c2s1_000002.jpg").unlink(), "c2s1_000002.jpg", "missing"),
    (lambda r: (r / "query_info.txt").write_bytes(b"5 40 30 20 50 c9s9_000001\r\n"),
     "query_info.txt", "not in the test split"),
    (lambda r: (r / "query_info.txt").write_bytes(b"5 40 30 c1s2_000010\r\n"),
     "query_info.txt", "expected"),
])
def test_prw_bad_input_names_the_file(prw, damage, file_part, words):
    damage(prw)
    with pytest.raises(DatasetError) as err:
        read_prw(prw)
    assert file_part in str(err.value) and words in str(err.value)


def _drop_var(path, name):
    content = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    scipy.io.savemat(path, {("other" if k == name else k): v for k, v in content.items()})


@pytest.mark.parametrize("damage, file_part, words", [
    (lambda r: (r / "annotation/test/train_test/TestG50.mat").unlink(), "TestG50.mat", "missing"),
    (lambda r: _drop_var(r / "annotation/pool.mat", "pool"), "pool.mat", "pool is missing"),
    (lambda r: _rewrite(r / "annotation/pool.mat", "pool", np.array([["s1.jpg"], ["s999.jpg"]],
                                                                    dtype=object)),
     "pool.mat", "not in Images.mat"),
    (lambda r: (r / "Image/SSM/s5.jpg").write_bytes(b"garbage"), "s5.jpg", "does not decode"),
])
def test_cuhk_bad_input_names_the_file(cuhk, damage, file_part, words):
    damage(cuhk)
    with pytest.raises(DatasetError) as err:
        read_cuhk_sysu(cuhk)
    assert file_part in str(err.value) and words in str(err.value)


def test_cuhk_query_not_in_pool_and_bad_box_shape(cuhk):
    images = scipy.io.loadmat(cuhk / "annotation/Images.mat")["Img"]
    images[0, 0]["box"][0, 0]["idlocate"] = np.array([[1.0, 2.0, 3.0]])
    scipy.io.savemat(cuhk / "annotation/Images.mat", {"Img": images})
    with pytest.raises(DatasetError, match=r"Images.mat.*4 numbers"):
        read_cuhk_sysu(cuhk)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset"):
        read_dataset("market", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset("prw", tmp_path / "nowhere")


def test_csv_export_exact_rows(prw, cuhk, tmp_path):
    export_csv(read_prw(prw), tmp_path / "prw.csv")
    rows = list(csv.reader(open(tmp_path / "prw.csv")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == ["train", "c1s1_000001.jpg", "10", "20", "40", "80", "932", "1"]
    assert rows[2] == ["train", "c1s1_000001.jpg", "0", "5", "20", "45", "-1", "1"]
    assert rows[-1] == ["query", "c1s2_000010.jpg", "40", "30", "60", "80", "5", "1"]
    assert sum(r[0] == "gallery" for r in rows) == 3
    export_csv(read_cuhk_sysu(cuhk), tmp_path / "cuhk.csv")
    rows = list(csv.reader(open(tmp_path / "cuhk.csv")))
    assert rows[1] == ["train", "s1.jpg", "5", "5", "25", "45", "1", ""]
    assert ["gallery", "s4.jpg", "30", "5", "50", "55", "1", ""] in rows
    assert rows[-1] == ["query", "s3.jpg", "10", "10", "30", "50", "1", ""]


def test_inspect_cli(prw, tmp_path):
    out = tmp_path / "boxes.csv"
    result = CliRunner().invoke(cli, ["inspect-dataset", "--dataset", "prw", "--root", str(prw),
                                      "--export", str(out)])
    assert result.exit_code == 0, result.output
    assert "labeled boxes" in result.output and "query" in result.output
    assert len(out.read_text().splitlines()) == 1 + 3 + 3 + 1
    (prw / "frame_train.mat").unlink()
    bad = CliRunner().invoke(cli, ["inspect-dataset", "--dataset", "prw", "--root", str(prw)])
    assert bad.exit_code != 0 and "frame_train.mat" in bad.output and "Traceback" not in bad.output


def test_cuhk_accepts_cells_of_structs_char_matrix_pool_and_bare_names(cuhk):
    """savemat of a list of dicts gives a cell of 1x1 structs; names may lack '.jpg'."""
    ann = cuhk / "annotation"
    img = scipy.io.loadmat(ann / "Images.mat")["Img"]
    as_cell = np.empty(img.shape, dtype=object)
    for i in range(img.size):
        rec = img[0, i:i + 1].copy()
        rec[0]["imname"] = np.array([str(rec[0]["imname"][0]).replace(".jpg", "")])
        as_cell[0, i] = rec
    scipy.io.savemat(ann / "Images.mat", {"Img": as_cell})
    names = np.array([n.replace(".jpg", "") for n in POOL])
    scipy.io.savemat(ann / "pool.mat", {"pool": names.reshape(-1, 1)})   # a char matrix
    data = read_cuhk_sysu(cuhk)
    assert [r.name for r in data.train] == ["s1.jpg", "s2.jpg"]
    assert [r.name for r in data.gallery] == POOL
    assert data.train[0].pids.tolist() == [1, UNLABELED]


def test_cuhk_protocol_query_lists_must_agree(cuhk):
    path = cuhk / "annotation/test/train_test/TestG100.mat"
    test = scipy.io.loadmat(path)["TestG100"]
    test[0, 0]["Query"][0, 0]["idlocate"] = np.array([[11.0, 10, 20, 40]])
    scipy.io.savemat(path, {"TestG100": test})
    with pytest.raises(DatasetError, match=r"TestG100.mat.*differs"):
        read_cuhk_sysu(cuhk)
    scipy.io.savemat(path, {"TestG100": np.concatenate([test, test], axis=1)})
    with pytest.raises(DatasetError, match=r"TestG100.mat: 2 queries"):
        read_cuhk_sysu(cuhk)


def test_cuhk_query_image_not_in_pool(cuhk):
    path = cuhk / "annotation/test/train_test/TestG50.mat"
    test = scipy.io.loadmat(path)["TestG50"]
    test[0, 0]["Query"][0, 0]["imname"] = np.array(["s1.jpg"])
    scipy.io.savemat(path, {"TestG50": test})
    with pytest.raises(DatasetError, match=r"TestG50.mat.*not in the test pool"):
        read_cuhk_sysu(cuhk)


def test_csv_prints_float32_boxes_without_noise(prw, tmp_path):
    scipy.io.savemat(prw / "annotations/c2s1_000002.jpg.mat",
                     {"box_new": np.array([[3, 50.1, 10.3, 25.2, 70.7]])})
    export_csv(read_prw(prw), tmp_path / "prw.csv")
    rows = list(csv.reader(open(tmp_path / "prw.csv")))
    assert rows[3] == ["train", "c2s1_000002.jpg", "50.1", "10.3", "75.3", "81", "3", "2"]


def test_prw_identity_lists(prw):
    from pipeline.data.prw import read_identity_list
    assert read_identity_list(prw / "ID_train.mat", "ID_train").tolist() == [3, 932]
    assert read_identity_list(prw / "ID_test.mat", "ID_test2").tolist() == [5]
    with pytest.raises(DatasetError, match="ID_test.mat.*ID_test is missing"):
        read_identity_list(prw / "ID_test.mat", "ID_test")
