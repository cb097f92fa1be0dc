"""The gallery store: manifest + immutable segments + FAISS index; atomic commits, resume,
incremental growth, the model guard, index kinds, filtered exact search, the results files."""
import csv
import json
import os

import numpy as np
import pytest

from footage_helpers import FAKE_MODEL, fail_the_moves_after, fake_block, fake_gallery
from pipeline.runtime.faiss_index import build_index, search_index
from pipeline.footage.ranking import SearchFilter, find
from pipeline.footage.report import camera_timelines, write_results
from pipeline.footage.store import (MANIFEST, SCHEMA_VERSION, SEGMENTS, GalleryError,
                                    GalleryWriter, MissingItemError, ModelMismatchError,
                                    RunHeader, commit, open_gallery)
from pipeline.arrays import l2_normalize
from pipeline.runtime.types import ModelInfo, RunSettings


def _video_blocks():
    a = fake_block(["/v/a.mp4"] * 3, [0, 5, 10], times=[0.0, 1.0, 2.0], cameras=["c1"] * 3,
                   seed=1)
    b = fake_block(["/v/b.mp4"] * 2, [0, 7], times=[0.0, 1.4], cameras=["c2"] * 2, seed=2)
    still = fake_block(["/x/x.jpg", "/x/y.jpg"], [0, 0], cameras=["c3"] * 2, seed=3)
    return [a, b, still]


def test_round_trip_tables_embeddings_and_previews(tmp_path):
    blocks = _video_blocks()
    g = open_gallery(fake_gallery(tmp_path / "g", blocks))
    assert g.num_frames == 7 and g.num_detections == 14
    assert g.frame_source == [s for b in blocks for s in b.sources]
    assert g.frame_index.tolist() == [0, 5, 10, 0, 7, 0, 0]
    assert g.frame_time_or_none(1) == 1.0 and g.frame_time_or_none(6) is None
    assert g.cameras == ["c1", "c2", "c3"]
    np.testing.assert_allclose(g.embeddings(np.arange(14)),
                               l2_normalize(np.concatenate([b.detections.embeddings for b in blocks])),
                               atol=1e-3)                     # stored as float16
    assert g.detection_frame.tolist() == np.repeat(np.arange(7), 2).tolist()
    assert g.preview(3) == blocks[1].previews[0]
    assert g.find_frame("/v/b.mp4", 7) == 4 and g.find_frame("/v/b.mp4", 8) is None
    assert g.index().ntotal == 14 and g.index_kind == "flat" and not g.approximate
    with pytest.raises(MissingItemError):
        g.preview(7)


def test_reader_sees_only_committed_state(tmp_path):
    d = tmp_path / "g"
    w = GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.5))
    w.add(_video_blocks()[0])
    with pytest.raises(GalleryError, match="unfinished"):
        open_gallery(d)                       # a first run in flight: nothing committed yet
    w.close()
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
    w = GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.5))
    w.add(_video_blocks()[1])                 # a second run in flight
    assert open_gallery(d).num_frames == 3    # still the last complete state
    assert len(w.done()) == 5                 # but a resumed run skips both
    w.close()
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
    assert open_gallery(d).num_frames == 5
    assert not list((d / "pending").iterdir())


def test_orphan_segments_and_temporaries_are_dropped(tmp_path):
    d = fake_gallery(tmp_path / "g", _video_blocks()[:1])
    (d / SEGMENTS / "seg-r0-orphan.h5").write_bytes(b"half written")  # killed before listing
    (d / ".gallery.json.1234.tmp").write_text("{")
    w = GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.5))
    assert len(w.done()) == 3                 # the orphan is not read
    w.add(_video_blocks()[1])
    w.close()
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
    assert not (d / SEGMENTS / "seg-r0-orphan.h5").exists()
    assert not list(d.glob(".*.tmp"))
    assert open_gallery(d).num_frames == 5


def test_growth_keeps_ids_and_extends_the_index(tmp_path):
    blocks = _video_blocks()
    d = fake_gallery(tmp_path / "g", blocks[:2])
    first = open_gallery(d)
    old_index_file = first.manifest.index.file
    w = GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.5))
    w.add(blocks[2])
    w.close()
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
    g = open_gallery(d)
    assert g.num_detections == 14 and g.index().ntotal == 14
    np.testing.assert_array_equal(g.boxes[:10], first.boxes)     # ids never move
    assert g.manifest.index.generation == 2 and not (d / old_index_file).exists()
    emb = g.embeddings(np.arange(14))
    ref = build_index(emb)
    for q in emb[[0, 11]]:
        assert search_index(g.index(), q, 5)[1].tolist() == search_index(ref, q, 5)[1].tolist()


def test_another_model_is_refused_naming_both(tmp_path):
    d = fake_gallery(tmp_path / "g", _video_blocks()[:1])
    other = ModelInfo("teacher", "configs/other.yaml", "a" * 64)
    with pytest.raises(ModelMismatchError) as e:
        GalleryWriter(d, RunHeader(other, 8, 0.5))
    assert "fake.pt" in str(e.value) and "configs/other.yaml" in str(e.value)
    with pytest.raises(GalleryError, match="min-score"):
        GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.3))
    with pytest.raises(GalleryError, match="8-d"):
        GalleryWriter(d, RunHeader(FAKE_MODEL, 16, 0.5))


def test_a_second_writer_is_refused(tmp_path):
    """Another process cannot write the gallery while one does; once it closes, it can."""
    import subprocess
    import sys
    from pathlib import Path
    second = ("import sys; from footage_helpers import FAKE_MODEL; "
              "from pipeline.footage.store import GalleryWriter, RunHeader; "
              "GalleryWriter(sys.argv[1], RunHeader(FAKE_MODEL, 8, 0.5)).close()")
    root = Path(__file__).resolve().parent.parent
    run = lambda: subprocess.run([sys.executable, "-c", second, str(tmp_path / "g")],  # noqa: E731
                                 cwd=root, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"})
    w = GalleryWriter(tmp_path / "g", RunHeader(FAKE_MODEL, 8, 0.5))
    refused = run()
    assert refused.returncode != 0 and "another index run" in refused.stderr
    w.close()
    assert run().returncode == 0


def test_ranks_merge_into_one_gallery_in_a_fixed_order(tmp_path):
    blocks = _video_blocks()
    one = open_gallery(fake_gallery(tmp_path / "one", blocks))
    d = tmp_path / "two"
    writers = [GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.5), rank=r)
               for r in (0, 1)]
    writers[1].add(blocks[2])       # rank 1 finishes first: order must not depend on it
    writers[0].add(blocks[1])
    writers[1].add(blocks[0])
    for w in writers:
        w.close()
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
    two = open_gallery(d)
    key = lambda g: sorted(zip(g.frame_source, g.frame_index.tolist()))  # noqa: E731
    assert key(two) == key(one)
    assert two.frame_source == one.frame_source


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_are_recorded_and_switching_rebuilds(tmp_path, kind):
    d = fake_gallery(tmp_path / "g", _video_blocks(), kind=kind)
    g = open_gallery(d)
    assert g.index_kind == kind and g.approximate
    q = g.embeddings([3])[0]
    assert find(g, q, 1)[0].id == 3          # itself is found even approximately
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5), index_kind="flat")
    g = open_gallery(d)
    assert g.index_kind == "flat" and not g.approximate and g.index().ntotal == 14


def test_filtered_exact_search_equals_numpy(tmp_path):
    g = open_gallery(fake_gallery(tmp_path / "g", _video_blocks()))
    emb = g.embeddings(np.arange(g.num_detections))
    q = l2_normalize(np.random.default_rng(5).standard_normal((1, 8)))[0]
    cases = [(SearchFilter(), ()), (SearchFilter(("c1", "c3")), ()),
             (SearchFilter(start=0.5, end=1.5), ()), (SearchFilter(), (0, 4))]
    for filt, exclude in cases:
        frames = np.ones(g.num_frames, bool)
        if filt.cameras:
            frames &= np.isin(g.frame_camera, filt.cameras)
        if filt.start is not None:
            frames &= (g.frame_time >= filt.start) & (g.frame_time <= filt.end)
        frames[list(exclude)] = False
        rows = np.flatnonzero(frames[g.detection_frame])
        sims = emb[rows] @ q
        order = rows[np.argsort(-sims, kind="stable")]
        hits = find(g, q, 50, filt, exclude)
        assert [h.id for h in hits] == order.tolist(), filt
        np.testing.assert_allclose([h.similarity for h in hits], np.sort(sims)[::-1], atol=1e-5)
        assert [h.rank for h in hits] == list(range(1, len(rows) + 1))
    with pytest.raises(MissingItemError, match="no camera 'c9'"):
        find(g, q, 5, SearchFilter(("c9",)))
    with pytest.raises(GalleryError, match="after its end"):
        find(g, q, 5, SearchFilter(start=3, end=1))


def test_results_files(tmp_path):
    g = open_gallery(fake_gallery(tmp_path / "g", _video_blocks()))
    q = g.embeddings([0])[0]
    hits = find(g, q, 4, exclude_frames=(0,))
    query = {"kind": "hit", "hit": 0, "box": [1, 2, 3, 4], "image": None, "frame_id": 0,
             "camera": "c1", "time": 0.0, "source": "/v/a.mp4", "frame": 0}
    payload = write_results(tmp_path / "out", g, query, g.preview(0), hits, SearchFilter())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == json.loads(json.dumps(payload))
    for h, s in zip(hits, saved["hits"]):
        assert {k: s[k] for k in ("rank", "similarity", "source", "frame", "time", "camera",
                                  "box")} == {"rank": h.rank, "similarity": h.similarity,
                                              "source": h.source, "frame": h.frame,
                                              "time": h.time, "camera": h.camera, "box": h.box}
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(v) for v in rows[0]["box"].split(",")] == pytest.approx(hits[0].box, abs=0.01)
    assert rows[0]["source"] == hits[0].source and rows[0]["camera"] == hits[0].camera
    assert (tmp_path / "out" / "results.html").stat().st_size > 1000


def test_timeline_places_hits_by_time_or_by_order(tmp_path):
    g = open_gallery(fake_gallery(tmp_path / "g", _video_blocks()))
    hits = find(g, g.embeddings([0])[0], 14)
    rows = {r["camera"]: r for r in camera_timelines(g, hits, query_frame=1)}
    assert rows["c1"]["axis"] == "seconds" and (rows["c1"]["start"], rows["c1"]["end"]) == (0, 2)
    assert rows["c1"]["query"] == 1.0 and rows["c2"]["query"] is None
    assert sorted(m["at"] for m in rows["c2"]["marks"]) == [0.0, 0.0, 1.4, 1.4]
    assert rows["c3"]["axis"] == "frame order"
    assert sorted(m["at"] for m in rows["c3"]["marks"]) == [0.0, 0.0, 1.0, 1.0]


def test_not_a_gallery_and_newer_schema(tmp_path):
    with pytest.raises(GalleryError, match="not a gallery"):
        open_gallery(tmp_path)
    d = fake_gallery(tmp_path / "g", _video_blocks()[:1])
    m = json.loads((d / MANIFEST).read_text())
    m["version"] = 99
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(GalleryError, match="version 99"):
        open_gallery(d)


def test_commit_leaves_a_complete_manifest_at_every_step(tmp_path, monkeypatch):
    """Fail the commit at each of its file operations: the reader keeps the old state, and a
    later commit completes it."""
    blocks = _video_blocks()
    d = fake_gallery(tmp_path / "g", blocks[:1])
    w = GalleryWriter(d, RunHeader(FAKE_MODEL, 8, 0.5))
    w.add(blocks[1])
    w.close()
    for step in range(2):   # the index file, then the manifest
        fail_the_moves_after(monkeypatch, step, "pipeline.files", "pipeline.runtime.faiss_index")
        with pytest.raises(OSError):
            commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
        monkeypatch.undo()
        assert open_gallery(d).num_frames == 3
    commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
    assert open_gallery(d).num_frames == 5


def test_a_version_1_gallery_is_read_and_rewritten_by_the_next_commit(tmp_path):
    """Galleries made before run settings were typed kept them as text in version 1: they
    open as they are (same settings, same tables) and the next commit writes version 2."""
    d = fake_gallery(tmp_path / "g", _video_blocks()[:1])
    m = json.loads((d / MANIFEST).read_text())
    m["version"] = 1
    m["model"]["settings"] = "size=48 proposals=5 bf16"
    (d / MANIFEST).write_text(json.dumps(m))
    g = open_gallery(d)
    assert g.model.settings == RunSettings(48, 5, True) and g.num_frames == 3
    commit(d, RunHeader(g.model, 8, 0.5))
    rewritten = json.loads((d / MANIFEST).read_text())
    assert rewritten["version"] == SCHEMA_VERSION
    assert rewritten["model"]["settings"] == {"size": 48, "proposals": 5, "bf16": True}
    with pytest.raises(ModelMismatchError, match="size=48 proposals=5 bf16"):
        commit(d, RunHeader(FAKE_MODEL, 8, 0.5))
