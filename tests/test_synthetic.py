"""The synthetic world: deterministic, splits disjoint, identities recur across cameras, and
the generator -> writer -> reader round trip returns exactly the intended records."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.data import read_dataset
from pipeline.data.records import UNLABELED
from pipeline.data.synthetic import SyntheticWorldError, generate, make_synthetic
from pipeline.data.synthetic.world import PRW_LARGE_PID, parse_size

TINY = dict(identities=8, images=24, size=(96, 72), cameras=3)
MAT_HEADER = 116  # MATLAB v5 header text holds the creation time; compare what follows


def file_contents(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[str(path.relative_to(root))] = data[MAT_HEADER:] if path.suffix == ".mat" else data
    return out


def labeled(records):
    return {int(p) for r in records for p in r.pids if p != UNLABELED}


def assert_same_records(read, intended):
    assert [r.name for r in read] == [r.name for r in intended]
    for a, b in zip(read, intended):
        assert (a.width, a.height, a.camera) == (b.width, b.height, b.camera), a.name
        np.testing.assert_array_equal(a.boxes, b.boxes, err_msg=a.name)
        np.testing.assert_array_equal(a.pids, b.pids, err_msg=a.name)
        assert a.boxes.dtype == np.float32 and a.path.is_file()


@pytest.mark.parametrize("fmt", ["prw", "cuhk-sysu"])
def test_same_seed_same_files_other_seed_other_images(fmt, tmp_path):
    extra = {"images": 104} if fmt == "cuhk-sysu" else {}
    args = {**TINY, **extra}
    a = file_contents(make_synthetic(fmt, tmp_path / "a", seed=3, **args))
    b = file_contents(make_synthetic(fmt, tmp_path / "b", seed=3, **args))
    c = file_contents(make_synthetic(fmt, tmp_path / "c", seed=4, **args))
    assert a == b
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == args["images"]
    assert any(a[k] != c.get(k) for k in images)


def test_prw_round_trip_and_world_properties(synthetic_prw, tmp_path):
    intended = generate("prw", tmp_path / "prw", seed=1, **TINY)
    data = read_dataset("prw", intended.root)
    assert_same_records(data.train, intended.train)
    assert_same_records(data.gallery, intended.gallery)
    assert len(data.queries) == len(intended.queries) > TINY["identities"] // 2  # per camera
    for got, want in zip(data.queries, intended.queries):
        assert (got.image, got.pid, got.camera) == (want.image, want.pid, want.camera)
        np.testing.assert_array_equal(got.box, want.box)

    data = read_dataset("prw", synthetic_prw)  # the shared fixture: 12 identities, 40 frames
    train_ids, test_ids = labeled(data.train), labeled(data.gallery)
    assert train_ids and test_ids and not train_ids & test_ids
    assert PRW_LARGE_PID in train_ids and max(train_ids) - min(train_ids) + 1 > len(train_ids)
    for records in (data.train, data.gallery):
        for pid in labeled(records):
            holding = [r for r in records if pid in r.pids]
            assert len(holding) >= 2 and len({r.camera for r in holding}) >= 2, pid
            assert all((r.pids == pid).sum() == 1 for r in holding)
    for r in data.train + data.gallery:
        assert 2 <= len(r.boxes) <= 6 and r.camera in (1, 2, 3)
        assert r.name.startswith(f"c{r.camera}s")
        assert (r.boxes[:, 2] > r.boxes[:, 0]).all() and (r.boxes[:, 3] > r.boxes[:, 1]).all()
        assert (r.boxes >= 0).all() and (r.boxes[:, 2] <= r.width).all()
        assert (r.boxes[:, 3] <= r.height).all()
    assert any((r.pids == UNLABELED).any() for r in data.train + data.gallery)
    heights = np.concatenate([r.boxes[:, 3] - r.boxes[:, 1] for r in data.gallery]) / 120
    assert heights.max() > 0.7 and heights.min() < 0.5  # people at several depths
    by_name = {r.name: r for r in data.gallery}
    assert {q.pid for q in data.queries} == test_ids  # every test identity is queried,
    pairs = [(q.pid, q.camera) for q in data.queries]  # at most once per camera
    assert len(set(pairs)) == len(pairs) and len(pairs) > len(test_ids)
    for q in data.queries:
        frame = by_name[q.image]
        assert any(np.array_equal(b, q.box) and p == q.pid for b, p in zip(frame.boxes, frame.pids))
        others = [r for r in data.gallery if r.name != q.image and q.pid in r.pids]
        assert any(r.camera != q.camera for r in others)


def test_cuhk_round_trip_and_protocol(synthetic_cuhk, tmp_path):
    intended = generate("cuhk-sysu", tmp_path / "cuhk", seed=2, **{**TINY, "images": 104})
    data = read_dataset("cuhk-sysu", intended.root)
    assert_same_records(data.train, intended.train)
    assert_same_records(data.gallery, intended.gallery)
    assert [(q.image, q.pid) for q in data.queries] == [(q.image, q.pid) for q in intended.queries]
    assert sorted(data.query_galleries) == sorted(intended.query_galleries) == [50]
    for got, want in zip(data.query_galleries[50], intended.query_galleries[50]):
        assert got.images == want.images
        np.testing.assert_array_equal(got.boxes, want.boxes)

    data = read_dataset("cuhk-sysu", synthetic_cuhk)
    assert labeled(data.train) == set(range(1, len(labeled(data.train)) + 1))
    assert all(r.name.startswith("s") and r.camera is None for r in data.train + data.gallery)
    pool = {r.name: r for r in data.gallery}
    for q, query in enumerate(data.queries):
        assert query.pid == q + 1 and query.image in pool
        gallery = data.query_galleries[50][q]
        assert len(gallery.images) == 50 and query.image not in gallery.images
        assert len(set(gallery.images)) == 50
        present = ~np.isnan(gallery.boxes).any(axis=1)
        k = int(present.sum())
        assert k >= 1 and present[:k].all()  # positives first
        holding = {n for n, r in pool.items() if query.pid in r.pids} - {query.image}
        assert set(gallery.images[:k]) == holding
        for name, box in zip(gallery.images[:k], gallery.boxes[:k]):
            r = pool[name]
            np.testing.assert_array_equal(r.boxes[r.pids == query.pid][0], box)


def test_refusals(tmp_path):
    with pytest.raises(SyntheticWorldError, match="TestG50"):
        generate("cuhk-sysu", tmp_path / "small", **TINY)
    with pytest.raises(SyntheticWorldError, match="too few"):
        generate("prw", tmp_path / "few", identities=20, images=10)
    with pytest.raises(SyntheticWorldError, match="WIDTHxHEIGHT"):
        parse_size("320by240")
    assert parse_size("320x240") == (320, 240)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SyntheticWorldError, match="not empty"):
        generate("prw", foreign, **TINY)
    again = make_synthetic("prw", tmp_path / "again", **TINY)
    assert make_synthetic("prw", again, **TINY) == again  # an earlier world is replaced


def test_cli_make_synthetic(tmp_path):
    from cli import cli
    out = tmp_path / "cli-prw"
    result = CliRunner().invoke(cli, ["make-synthetic", "--format", "prw", "--out", str(out),
                                      "--identities", "6", "--images", "12", "--size", "80x64",
                                      "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    data = read_dataset("prw", out)
    assert len(data.train) + len(data.gallery) == 12 and data.train[0].width == 80
    bad = CliRunner().invoke(cli, ["make-synthetic", "--format", "prw", "--out",
                                   str(tmp_path / "bad"), "--size", "80-64"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
    few = CliRunner().invoke(cli, ["make-synthetic", "--format", "cuhk-sysu", "--out",
                                   str(tmp_path / "few"), "--identities", "6", "--images", "20"])
    assert few.exit_code == 2 and "TestG50" in few.output
