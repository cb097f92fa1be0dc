"""Whole-pixel boxes as the published evaluations read the releases, and the readers' fast
paths (MAT v5 numeric matrices, JPEG sizes) against scipy / PIL."""
import numpy as np
import pytest
import scipy.io
from PIL import Image

from fixtures_formats import cell, save_image
from pipeline.data import read_dataset
from pipeline.data.image_files import image_size, jpeg_size
from pipeline.data.matfile import numeric_variable
from pipeline.data.published_boxes import (choose, cuhk_boxes, from_corners, prw_frame_boxes,
                                           prw_query_box)


def test_prw_frames_clip_then_add_then_truncate():
    # x clipped to 0 first, so x2 = 0 + 30.7 -> 30; y2 = 5.5 + 40.6 = 46.1 -> 46
    np.testing.assert_array_equal(prw_frame_boxes([[-2.5, 5.5, 30.7, 40.6]]), [[0, 5, 30, 46]])
    # a sum that is a whole number stays one
    np.testing.assert_array_equal(prw_frame_boxes([[10.3, 0.25, 20.7, 9.75]]), [[10, 0, 31, 10]])


def test_prw_queries_add_then_truncate_then_clip():
    # x2 comes from the unclipped x: -1.5 + 20.7 = 19.2 -> 19 (a frame row would give 20)
    np.testing.assert_array_equal(prw_query_box([-1.5, -0.5, 20.7, 40.2]), [0, 0, 19, 39])


def test_cuhk_truncates_before_adding():
    # x2 = int(0.6) + int(9.6) = 9, where int(0.6 + 9.6) would be 10; NaN rows stay NaN
    out = cuhk_boxes([[0.6, 0.6, 9.6, 9.6], [np.nan] * 4])
    np.testing.assert_array_equal(out[0], [0, 0, 9, 9])
    assert np.isnan(out[1]).all()


def test_readers_truncate_from_the_files_float64_numbers():
    """float32 corners lose what the file held: 0.1 + 37 stored as float32 gives back a width
    of 36.9999985, whose truncation is 36; the reader's float64 numbers give 37."""
    corners = np.array([[0.1, 0, 37.1, 50]], np.float32)
    assert from_corners(corners, "cuhk-sysu")[0, 2] == 36
    assert cuhk_boxes([[0.1, 0, 37, 50]])[0, 2] == 37


def test_choose_between_conventions():
    boxes = np.array([[0.9, 0.9, 10.9, 10.9]], np.float32)
    np.testing.assert_array_equal(choose(boxes, None, "prw", "published"), [[0, 0, 10, 10]])
    np.testing.assert_allclose(choose(boxes, None, "prw", "exact"), boxes)
    given = np.array([[1, 1, 9, 9]], np.float32)
    np.testing.assert_array_equal(choose(boxes, given, "prw", "published"), given)
    with pytest.raises(ValueError, match="convention"):
        choose(boxes, None, "prw", "rounded")


def write_decimal_prw(root):
    """One test frame c1s1_000001 (160x120) with pid 4 at x=-1.5, y=2.25, w=20.7, h=40.5 and
    an unlabeled person; one training frame; the query is pid 4's box."""
    save_image(root / "frames" / "c1s1_000001.jpg")
    save_image(root / "frames" / "c2s1_000002.jpg")
    (root / "annotations").mkdir(parents=True)
    scipy.io.savemat(root / "annotations" / "c1s1_000001.jpg.mat",
                     {"box_new": np.array([[4, -1.5, 2.25, 20.7, 40.5], [-2, 50.5, 3.3, 9.6, 30.1]])})
    scipy.io.savemat(root / "annotations" / "c2s1_000002.jpg.mat",
                     {"box_new": np.array([[7, 1, 1, 10, 20]], np.float64)}, do_compression=True)
    scipy.io.savemat(root / "frame_test.mat", {"img_index_test": cell(["c1s1_000001"])})
    scipy.io.savemat(root / "frame_train.mat", {"img_index_train": cell(["c2s1_000002"])})
    (root / "query_info.txt").write_text("4 -1.5 2.25 20.7 40.5 c1s1_000001\r\n")
    return root


def test_prw_reader_keeps_both_conventions(tmp_path):
    data = read_dataset("prw", write_decimal_prw(tmp_path / "PRW"))
    frame, query = data.gallery[0], data.queries[0]
    np.testing.assert_allclose(frame.boxes, [[0, 2.25, 20.7, 42.75], [50.5, 3.3, 60.1, 33.4]],
                               rtol=1e-6)
    np.testing.assert_array_equal(frame.published_boxes, [[0, 2, 20, 42], [50, 3, 60, 33]])
    np.testing.assert_array_equal(query.published_box, [0, 2, 19, 42])   # x2 = int(19.2)
    assert len(data.train) == 1 and data.train[0].published_boxes.tolist() == [[1, 1, 11, 21]]
    assert read_dataset("prw", tmp_path / "PRW", train=False).train == []


def test_numeric_variable_reads_what_loadmat_reads(tmp_path):
    rng = np.random.default_rng(0)
    values = {"box_new": rng.normal(size=(3, 5)), "abc": np.arange(6, dtype=np.int16).reshape(2, 3),
              "a_long_variable_name": rng.integers(0, 9, (4, 2)).astype(np.uint8),
              "single": np.float32([[1.5, -2]])}
    for compress in (False, True):
        path = tmp_path / f"v{compress}.mat"
        scipy.io.savemat(path, {**values, "text": "x", "empty": np.zeros((0, 5)),
                                "cplx": np.array([1 + 2j])}, do_compression=compress)
        expected = scipy.io.loadmat(path)
        for name in values:
            got = numeric_variable(path, (name,))
            assert got.dtype == expected[name].dtype and got.shape == expected[name].shape
            np.testing.assert_array_equal(got, expected[name])
        for other in ("text", "empty", "cplx", "missing"):      # left to scipy
            assert numeric_variable(path, (other,)) is None
        np.testing.assert_array_equal(numeric_variable(path, ("missing", "abc")), values["abc"])


def test_jpeg_size_walks_the_header(tmp_path):
    image = Image.new("RGB", (333, 217))
    image.save(tmp_path / "p.jpg", progressive=True, exif=Image.Exif())
    image.save(tmp_path / "b.jpg")
    image.save(tmp_path / "i.png")
    assert jpeg_size(tmp_path / "p.jpg") == jpeg_size(tmp_path / "b.jpg") == (333, 217)
    assert jpeg_size(tmp_path / "i.png") is None and image_size(tmp_path / "i.png") == (333, 217)
