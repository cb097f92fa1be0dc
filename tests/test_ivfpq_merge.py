"""ivfpq shards that share one training (`index --ivfpq-trained`) merge on disk: code files
copied with renumbered ids, nothing trained or encoded; other trainings or models are
refused naming both; an interrupted merge leaves no gallery; a repair keeps the training the
manifest names (and a retraining writes a new trained-N file)."""
from itertools import count

import numpy as np
import pytest

from footage_helpers import (FAKE_MODEL, fail_the_moves_after, fake_block, fake_gallery,
                             kill_after_the_lists)
from pipeline.footage.ranking import find
from pipeline.footage.store import (MANIFEST, SEGMENTS, GalleryError, ModelMismatchError,
                                    RunHeader, merge_galleries, open_gallery, read_manifest,
                                    shared_training)
from pipeline.footage.store.ondisk import FOLDER, read_rows
from pipeline.footage.store.verify import repair_gallery, verify_gallery
from pipeline.footage.track_store import make_track_table
from pipeline.runtime.types import ModelInfo
from test_ivfpq import rescore_file_rows, segment_rows

HEADER = RunHeader(FAKE_MODEL, 8, 0.5)


def _blocks(n_blocks=4, frames=20):
    """Frames of 4 sources, so that shards 1/2 and 2/2 interleave in the merged order."""
    return [fake_block([f"/v/cam{b}.mp4"] * frames, list(range(frames)),
                       times=np.arange(frames, dtype=float), cameras=[f"c{b % 2}"] * frames,
                       per_frame=5, seed=b)
            for b in range(n_blocks)]


def _shards(tmp_path, blocks):
    """Shard 1/2 trains; shard 2/2 (made first here: its ids start where 1/2's do) shares it."""
    a = fake_gallery(tmp_path / "a", blocks[0::2], kind="ivfpq")
    b = fake_gallery(tmp_path / "b", blocks[1::2], kind="ivfpq", ivfpq_trained=a)
    return a, b


def _results(g, rows, k=25):
    return [[(h.id, h.similarity) for h in find(g, q, k)] for q in g.embeddings(rows)]


def _files(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _no_encoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a merge of one training must not train or encode")
    for name in ("train_ivfpq", "encode_block"):
        monkeypatch.setattr(f"pipeline.footage.store.ondisk.{name}", refuse)


def test_shards_of_one_training_merge_into_the_gallery_one_run_makes(tmp_path, monkeypatch):
    blocks = _blocks()
    a, b = _shards(tmp_path, blocks)
    whole = open_gallery(fake_gallery(tmp_path / "whole", blocks, kind="ivfpq",
                                      ivfpq_trained=a))
    inputs = {**_files(a), **_files(b)}
    _no_encoding(monkeypatch)
    merge_galleries(tmp_path / "m", [b, a], tracks=make_track_table)
    m = open_gallery(tmp_path / "m")
    entry = m.manifest.index
    assert entry.params["blocks"] == ["codes-1-1.faiss", "codes-1-2.faiss"]
    assert entry.params["trained_sha256"] == whole.manifest.index.params["trained_sha256"]
    assert entry.params["trained_on"] == 200 and m.index().ntotal == 400
    assert m.frame_source == whole.frame_source          # the order of one run: a, b, a, b
    np.testing.assert_array_equal(m.embeddings(np.arange(400)), whole.embeddings(np.arange(400)))
    rows = [0, 57, 123, 250, 399]                       # rows of every segment
    assert _results(m, rows) == _results(whole, rows)   # the same ids, the same similarities
    assert {p: p.read_bytes() for p in inputs} == inputs   # the inputs' files untouched


def test_a_merge_rescores_from_one_file_in_the_merged_row_order(tmp_path):
    a, b = _shards(tmp_path, _blocks())
    merge_galleries(tmp_path / "m", [b, a])
    d = tmp_path / "m"
    m = open_gallery(d)
    np.testing.assert_array_equal(rescore_file_rows(d), segment_rows(d))   # a, b, a, b
    every = read_rows(d, m.manifest.segments, np.arange(400))    # exact, from the segments
    for row in (0, 57, 123, 250, 399):                           # rows of every segment
        hits = find(m, every[row], 10)
        assert hits[0].id == row
        np.testing.assert_allclose([h.similarity for h in hits],
                                   every[[h.id for h in hits]] @ every[row], atol=1e-6)
    assert verify_gallery(d).ok
    path = d / FOLDER / m.manifest.index.params["rescore"]["file"]
    rows = rescore_file_rows(d)
    with open(path, "r+b") as f:                 # the first two segments' rows swapped
        f.write(np.concatenate([rows[100:200], rows[:100], rows[200:]]).tobytes())
    report = verify_gallery(d)
    assert not report.ok and "not the embeddings of segment" in report.lines()[0]


def test_trainings_apart_are_refused_naming_both_and_retrain_merges(tmp_path):
    blocks = _blocks()
    a = fake_gallery(tmp_path / "a", blocks[0::2], kind="ivfpq")
    b = fake_gallery(tmp_path / "b", blocks[1::2], kind="ivfpq")     # trained on its own
    with pytest.raises(GalleryError) as refused:
        merge_galleries(tmp_path / "m", [a, b])
    line = str(refused.value)
    assert "\n" not in line and str(a) in line and str(b) in line
    assert f"--ivfpq-trained {a}" in line and "--retrain" in line
    assert not (tmp_path / "m" / MANIFEST).exists()
    merge_galleries(tmp_path / "m2", [a, b], retrain=True)
    g = open_gallery(tmp_path / "m2")
    assert g.index().ntotal == 400 and g.manifest.index.params["blocks"] == ["codes-1.faiss"]
    flat = fake_gallery(tmp_path / "flat", _blocks(6)[4:])
    with pytest.raises(GalleryError, match=f"{flat}.*flat index.*--retrain"):
        merge_galleries(tmp_path / "m3", [a, flat], index_kind="ivfpq")


def test_a_training_of_another_model_or_gallery_is_refused_naming_both(tmp_path):
    blocks = _blocks()
    other = ModelInfo("teacher", "configs/other.yaml", "a" * 64)
    theirs = fake_gallery(tmp_path / "theirs", blocks[:1], kind="ivfpq", model=other)
    with pytest.raises(ModelMismatchError, match=f"{theirs}.*other.yaml.*fake.pt"):
        shared_training(tmp_path / "new", theirs, HEADER)
    a = fake_gallery(tmp_path / "a", blocks[:1], kind="ivfpq")
    b = fake_gallery(tmp_path / "b", blocks[1:2], kind="ivfpq")
    with pytest.raises(GalleryError, match=f"{b}'s ivfpq index was trained apart from {a}"):
        shared_training(b, a, HEADER)                 # b keeps its own training
    flat = fake_gallery(tmp_path / "flat", blocks[2:3])
    with pytest.raises(GalleryError, match=f"{flat} has a flat index"):
        shared_training(tmp_path / "new", flat, HEADER)


def test_an_interrupted_merge_leaves_no_gallery(tmp_path, monkeypatch):
    a, b = _shards(tmp_path, _blocks())
    kill_after_the_lists("from pipeline.footage.store import merge_galleries\n"
                         "merge_galleries(sys.argv[1], sys.argv[2:])", tmp_path / "k", a, b)
    assert read_manifest(tmp_path / "k") is None
    with pytest.raises(GalleryError, match="unfinished run or merge"):
        merge_galleries(tmp_path / "k", [a, b])
    for step in count():                   # a disk gone at each file move in turn
        fail_the_moves_after(monkeypatch, step, "pipeline.files", "pipeline.runtime.faiss_index")
        try:
            merge_galleries(tmp_path / f"m{step}", [a, b])
            break
        except OSError:
            assert read_manifest(tmp_path / f"m{step}") is None
        finally:
            monkeypatch.undo()
    assert step > 4 and open_gallery(tmp_path / f"m{step}").index().ntotal == 400


def test_a_repair_killed_midway_leaves_the_training_the_manifest_names(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    before = read_manifest(d).index.params
    trained = (d / FOLDER / before["trained"]).read_bytes()
    segment = d / SEGMENTS / read_manifest(d).segments[1].file
    segment.write_bytes(segment.read_bytes()[:1000])
    kill_after_the_lists("from pipeline.footage.store.verify import repair_gallery\n"
                         "repair_gallery(sys.argv[1])", d)
    assert read_manifest(d).index.params == before
    assert (d / FOLDER / before["trained"]).read_bytes() == trained
    r = repair_gallery(d)                              # finished: the training is kept
    assert r.manifest.index.params["trained_sha256"] == before["trained_sha256"]
    assert verify_gallery(d).ok and open_gallery(d).index().ntotal == 300


def test_a_damaged_training_is_trained_again_into_a_new_file(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(2), kind="ivfpq")
    (d / FOLDER / "trained-1.faiss").write_bytes(b"junk")
    assert not verify_gallery(d).ok
    r = repair_gallery(d)
    assert r.manifest.index.params["trained"] == "trained-2.faiss"
    assert not (d / FOLDER / "trained-1.faiss").exists()      # no manifest names it
    assert verify_gallery(d).ok
    g = open_gallery(d)
    assert find(g, g.embeddings([150])[0], 1)[0].id == 150


def test_ivfpq_trained_with_another_index_kind_is_refused(tmp_path):
    from click.testing import CliRunner

    from cli import cli
    a = fake_gallery(tmp_path / "a", _blocks(1), kind="ivfpq")
    r = CliRunner().invoke(cli, ["index", "--gallery", str(tmp_path / "g"), "--model", "m.pt",
                                 "--ivfpq-trained", str(a), "--index", "flat", "x"])
    assert r.exit_code != 0 and "--ivfpq-trained shares an ivfpq training" in r.output
