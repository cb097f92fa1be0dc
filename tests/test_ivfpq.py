"""The ivfpq gallery index: trained once on a sample, codes added per commit without
retraining, lists on disk mapped read-only, exact similarities after re-scoring, the last
complete state after a kill -9 in the middle of a commit."""
import json
import shutil

import h5py
import numpy as np
import pytest

from footage_helpers import FAKE_MODEL, fake_block, fake_gallery, kill_after_the_lists, run_killed
from pipeline.arrays import l2_normalize
from pipeline.footage.ranking import SearchFilter, find
from pipeline.footage.store import MANIFEST, GalleryWriter, RunHeader, commit, open_gallery
from pipeline.footage.store.ondisk import FOLDER, read_rows
from pipeline.footage.store.verify import verify_gallery
from pipeline.runtime.faiss_index import build_index, ivfpq_factory, search_index

HEADER = RunHeader(FAKE_MODEL, 8, 0.5)


def _blocks(n_blocks=3, frames=20, start=0):
    return [fake_block([f"/v/cam{b % 2}.mp4"] * frames,
                       list(range((start + b) * frames, (start + b + 1) * frames)),
                       times=np.arange(frames, dtype=float) + (start + b) * frames,
                       cameras=[f"c{b % 2}"] * frames, per_frame=5, seed=start + b)
            for b in range(n_blocks)]


def _add(directory, blocks):
    w = GalleryWriter(directory, HEADER)
    for b in blocks:
        w.add(b)
    w.close()


def _exact_top(g, q, k):
    return search_index(build_index(g.embeddings(np.arange(g.num_detections))), q, k)


def test_factory_names_the_index_as_faiss_does():
    assert ivfpq_factory(256, 262_144) == "IVF2048,PQ32"
    assert ivfpq_factory(256, 10_000_000) == "IVF4096,PQ32"
    assert ivfpq_factory(8, 100) == "IVF2,PQ8x6"        # a tiny sample: fewer centroids


def test_build_searches_with_exact_similarities_on_mapped_lists(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    g = open_gallery(d)
    entry = g.manifest.index
    assert entry.kind == "ivfpq" and g.approximate and g.rescored
    assert entry.params["factory"].startswith("IVF") and entry.params["trained_on"] == 300
    assert (d / FOLDER / entry.params["data"]).is_file()
    q = g.embeddings([7])[0]
    hits = find(g, q, 10)
    sims, ids = _exact_top(g, q, 10)
    assert [h.id for h in hits] == ids.tolist()          # tiny gallery: every list probed
    np.testing.assert_allclose([h.similarity for h in hits], sims, atol=1e-6)
    allowed = find(g, q, 10, SearchFilter(("c1",)))
    assert allowed and all(h.camera == "c1" for h in allowed)


def test_a_commit_adds_codes_without_retraining(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    first = open_gallery(d).manifest.index
    assert first.params["trained"] == "trained-1.faiss"
    trained = (d / FOLDER / "trained-1.faiss").read_bytes()
    _add(d, _blocks(2, start=3))
    commit(d, HEADER)                                    # keeps the gallery's kind
    g = open_gallery(d)
    entry = g.manifest.index
    assert entry.kind == "ivfpq" and g.num_detections == 500 == g.index().ntotal
    assert entry.params["trained"] == "trained-1.faiss"
    assert (d / FOLDER / "trained-1.faiss").read_bytes() == trained      # trained once
    assert entry.params["trained_on"] == first.params["trained_on"] == 300
    assert entry.params["blocks"] == first.params["blocks"] + ["codes-2.faiss"]
    assert sorted(p.name for p in (d / FOLDER).iterdir()) == sorted(
        ["trained-1.faiss", "codes-1.faiss", "codes-2.faiss", "lists-2.faiss", "lists-2.ivfdata",
             "rescore-1.f16"])
    q = g.embeddings([450])[0]                           # a row of the second commit
    assert find(g, q, 1)[0].id == 450


def test_kill_9_during_a_commit_leaves_the_last_complete_state(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    before = (d / MANIFEST).read_text()
    _add(d, _blocks(2, start=3))
    kill_after_the_lists("from footage_helpers import FAKE_MODEL\n"
                         "from pipeline.footage.store import RunHeader, commit\n"
                         "commit(sys.argv[1], RunHeader(FAKE_MODEL, 8, 0.5))", d)
    assert (d / MANIFEST).read_text() == before          # the old index still answers
    g = open_gallery(d)
    assert g.num_detections == 300 and g.index().ntotal == 300
    commit(d, HEADER)                                    # the next run finishes the commit
    g = open_gallery(d)
    assert g.num_detections == 500 == g.index().ntotal
    assert json.loads((d / MANIFEST).read_text())["index"]["generation"] == 2
    assert not list((d / FOLDER).glob("lists-1*"))       # what no manifest names is gone


def test_an_empty_gallery_cannot_train_ivfpq(tmp_path):
    from pipeline.footage.store import GalleryError
    d = tmp_path / "g"
    _add(d, [fake_block(["/x/a.jpg"], [0], per_frame=0)])
    with pytest.raises(GalleryError, match="no detections to train an ivfpq"):
        commit(d, HEADER, index_kind="ivfpq")


def test_embeddings_read_in_any_order(tmp_path):
    g = open_gallery(fake_gallery(tmp_path / "g", _blocks()))
    rows = np.array([250, 3, 3, 120, 0])
    every = g.embeddings(np.arange(g.num_detections))
    np.testing.assert_array_equal(g.embeddings(rows), every[rows])
    np.testing.assert_allclose(np.linalg.norm(every, axis=1), 1, atol=1e-5)
    assert l2_normalize(every).shape == every.shape


def _cli(*args):
    from click.testing import CliRunner
    from cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_shards_merge_into_one_gallery_as_one_run_makes_it(tmp_path):
    blocks = _blocks(4)
    whole = open_gallery(fake_gallery(tmp_path / "whole", blocks, kind="ivfpq"))
    a = fake_gallery(tmp_path / "a", blocks[1::2], kind="ivfpq")   # shard 2/2 first
    b = fake_gallery(tmp_path / "b", blocks[0::2], kind="ivfpq", ivfpq_trained=a)
    r = _cli("gallery", "merge", tmp_path / "m", a, b)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == str(tmp_path / "m")
    g = open_gallery(tmp_path / "m")
    assert g.frame_source == whole.frame_source and g.frame_index.tolist() == \
        whole.frame_index.tolist()                       # the order of one run
    np.testing.assert_array_equal(g.boxes, whole.boxes)
    assert g.index_kind == "ivfpq" and g.index().ntotal == 400
    q = g.embeddings([123])[0]
    assert find(g, q, 1)[0].id == 123
    overlap = fake_gallery(tmp_path / "c", blocks[:1], kind="ivfpq",  # frames b holds too
                           ivfpq_trained=a)
    again = _cli("gallery", "merge", tmp_path / "m2", b, overlap)
    assert again.exit_code != 0 and "in both" in again.output


def test_a_merge_of_other_models_is_refused_naming_both(tmp_path):
    from pipeline.runtime.types import ModelInfo
    other = ModelInfo("teacher", "configs/other.yaml", "a" * 64)
    a = fake_gallery(tmp_path / "a", _blocks(1))
    b = fake_gallery(tmp_path / "b", _blocks(1, start=5), model=other)
    r = _cli("gallery", "merge", tmp_path / "m", a, b)
    assert r.exit_code != 0
    line = r.output.strip().splitlines()[-1]
    assert str(a) in line and str(b) in line and "fake.pt" in line and "other.yaml" in line
    assert not (tmp_path / "m" / MANIFEST).exists()


def test_gallery_info_json_names_kind_parameters_and_bytes(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    r = _cli("gallery", "info", d, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["detections"] == 300 and info["frames"] == 60 and info["cameras"] == ["c0", "c1"]
    assert info["index"]["kind"] == "ivfpq" and info["index"]["approximate"]
    assert info["index"]["factory"] == open_gallery(d).manifest.index.params["factory"]
    assert info["model"]["name"] == "fake.pt"
    rescore = d / FOLDER / "rescore-1.f16"               # embeddings, not codes: apart
    assert info["bytes"]["rescore"] == rescore.stat().st_size == 300 * 8 * 2
    assert info["bytes"]["index"] == sum(p.stat().st_size for p in (d / FOLDER).iterdir()
                                         if p != rescore)
    assert info["bytes"]["segments"] > 0


def test_results_of_an_ivfpq_gallery_name_the_kind_and_say_approximate(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    r = _cli("search", "--gallery", d, "--hit", 5, "--top", 3, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["index"] == {"kind": "ivfpq", "approximate": True, "rescored": True}
    page = (tmp_path / "out" / "results.html").read_text()
    assert "ivfpq" in page and "approximate index" in page


def test_embeddings_are_stored_as_float16_and_float32_segments_still_read(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(1), kind="ivfpq")
    g = open_gallery(d)
    seg = d / "segments" / g.manifest.segments[0].file
    with h5py.File(seg, "r") as f:
        assert f["detections/embeddings"].dtype == np.float16
        half = f["detections/embeddings"][()]
    expected = l2_normalize(half.astype(np.float32))
    np.testing.assert_allclose(g.embeddings([3, 0]), expected[[3, 0]], atol=1e-7)
    old = d.parent / "old"                       # a gallery of the float32 days
    shutil.copytree(d, old)
    with h5py.File(old / "segments" / seg.name, "r+") as f:
        del f["detections/embeddings"]
        f["detections/embeddings"] = expected
    g_old = open_gallery(old)
    assert g_old.embeddings([3]).dtype == np.float32
    np.testing.assert_allclose(g_old.embeddings([3, 0]), expected[[3, 0]], atol=1e-7)
    assert find(g_old, expected[3], 1)[0].similarity == pytest.approx(1.0, abs=1e-6)


def test_shard_of_must_be_k_of_n():
    r = _cli("index", "--gallery", "g", "--model", "m.pt", "--shard-of", "3/2", "x")
    assert r.exit_code != 0 and "1 <= K <= N" in r.output


def test_a_gallery_from_before_named_trainings_still_searches_and_grows(tmp_path):
    """An ivfpq gallery whose manifest names no trained file (made before ``trained-N``) reads
    its ``trained.faiss``: it searches, verifies and takes a commit without retraining."""
    from pipeline.footage.store.verify import verify_gallery
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    (d / FOLDER / "trained-1.faiss").rename(d / FOLDER / "trained.faiss")
    manifest = json.loads((d / MANIFEST).read_text())
    del manifest["index"]["params"]["trained"]
    (d / MANIFEST).write_text(json.dumps(manifest))
    trained = (d / FOLDER / "trained.faiss").read_bytes()
    g = open_gallery(d)
    assert find(g, g.embeddings([7])[0], 1)[0].id == 7
    assert verify_gallery(d).ok
    _add(d, _blocks(1, start=3))
    commit(d, HEADER)
    g = open_gallery(d)
    assert g.num_detections == 400 and g.manifest.index.params["trained"] == "trained.faiss"
    assert (d / FOLDER / "trained.faiss").read_bytes() == trained        # not retrained
    assert find(g, g.embeddings([350])[0], 1)[0].id == 350


def segment_rows(d):
    """Every row of the gallery at ``d`` as its segments hold them (float16), in row order."""
    m = open_gallery(d).manifest
    out = []
    for s in m.segments:
        with h5py.File(d / "segments" / s.file, "r") as f:
            out.append(f["detections/embeddings"][()])
    return np.concatenate(out)


def rescore_file_rows(d):
    record = open_gallery(d).manifest.index.params["rescore"]
    rows = np.fromfile(d / FOLDER / record["file"], np.float16)
    return rows[:record["bytes"] // 2].reshape(record["rows"], -1)


def test_search_rescores_from_one_file_of_the_segments_rows_appended_per_commit(
        tmp_path, monkeypatch):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    _add(d, _blocks(2, start=3))
    commit(d, HEADER)
    g = open_gallery(d)
    record = g.manifest.index.params["rescore"]
    assert record == {"file": "rescore-1.f16", "rows": 500, "bytes": 500 * 8 * 2}  # appended
    np.testing.assert_array_equal(rescore_file_rows(d), segment_rows(d))        # row order
    every = read_rows(d, g.manifest.segments, np.arange(500))     # exact, from the segments
    monkeypatch.setattr("pipeline.footage.store.reader.read_rows", None)   # no segment read
    for row in (3, 250, 450):
        hits = find(g, every[row], 10)
        exact = every @ every[row]
        assert hits[0].id == row
        np.testing.assert_allclose([h.similarity for h in hits], exact[[h.id for h in hits]],
                                   atol=1e-6)
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


KILL_IN_THE_RESCORE_APPEND = """
import os, sys
import pipeline.footage.store.ondisk as ondisk
from footage_helpers import FAKE_MODEL
from pipeline.footage.store import RunHeader, commit
def write_some_then_die(f, *args):
    f.write(b"\\x01" * 100)       # part of a row, then the kill
    f.flush()
    os.kill(os.getpid(), 9)
ondisk._write_rescore_rows = write_some_then_die
commit(sys.argv[1], RunHeader(FAKE_MODEL, 8, 0.5))
"""


def test_kill_9_in_the_rescore_append_leaves_the_last_complete_state(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    before = (d / MANIFEST).read_text()
    path = d / FOLDER / "rescore-1.f16"
    _add(d, _blocks(2, start=3))
    run_killed(KILL_IN_THE_RESCORE_APPEND, d)
    assert (d / MANIFEST).read_text() == before and path.stat().st_size == 300 * 16 + 100
    assert verify_gallery(d).ok                          # bytes past the record: ignored
    g = open_gallery(d)
    assert find(g, g.embeddings([250])[0], 1)[0].id == 250
    commit(d, HEADER)                                    # cuts the tail off, then appends
    assert path.stat().st_size == 500 * 16
    np.testing.assert_array_equal(rescore_file_rows(d), segment_rows(d))
    assert verify_gallery(d).ok


def test_a_gallery_from_before_rescoring_files_searches_and_upgrade_adds_one(tmp_path):
    d = fake_gallery(tmp_path / "g", _blocks(), kind="ivfpq")
    manifest = json.loads((d / MANIFEST).read_text())
    (d / FOLDER / manifest["index"]["params"].pop("rescore")["file"]).unlink()
    (d / MANIFEST).write_text(json.dumps(manifest))
    g = open_gallery(d)                                  # reads its rows from the segments
    every = read_rows(d, g.manifest.segments, np.arange(300))
    hits = find(g, every[7], 5)
    assert hits[0].id == 7
    np.testing.assert_allclose([h.similarity for h in hits], every[[h.id for h in hits]] @ every[7],
                               atol=1e-6)
    assert verify_gallery(d).ok
    r = _cli("gallery", "upgrade", d)
    assert r.exit_code == 0 and "added its re-scoring file" in r.output, r.output
    assert open_gallery(d).manifest.index.params["rescore"]["rows"] == 300
    np.testing.assert_array_equal(rescore_file_rows(d), segment_rows(d))
    assert verify_gallery(d).ok and open_gallery(d).manifest.index.generation == 1
