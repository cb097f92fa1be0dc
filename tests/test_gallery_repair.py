"""Damaged galleries: a truncated segment, a junk or missing index file, a truncated ivfpq
lists file. `gallery verify` names the file, `search` and the app say so in one line,
`gallery repair` sets damaged segments aside and rebuilds the index, and `index` on the same
sources fills exactly the gap."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli import cli
from footage_helpers import FAKE_MODEL, fake_block, fake_gallery, index_args
from pipeline.footage.app import create_app
from pipeline.footage.store import (SEGMENTS, DamagedGalleryError, GalleryError, GalleryWriter,
                                    RunHeader, open_gallery, read_manifest)
from pipeline.footage.store.manifest import pending_files, read_pending
from pipeline.footage.store.ondisk import close_segment_files
from pipeline.footage.store.verify import repair_gallery, verify_gallery

ROOT = Path(__file__).resolve().parent.parent
HOLD_WRITER_LOCK = """
import sys, time
sys.path[:0] = ["tests", "."]
from footage_helpers import FAKE_MODEL
from pipeline.footage.store import GalleryWriter, RunHeader
writer = GalleryWriter(sys.argv[1], RunHeader(FAKE_MODEL, 8, 0.5))
print("writing", flush=True)
time.sleep(60)
"""


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _segment(gallery, keep):
    path = gallery / SEGMENTS / open_gallery(gallery).manifest.segments[1].file
    _truncate(path, keep(path.stat().st_size))
    return path


def _index(gallery, data):
    path = gallery / open_gallery(gallery).manifest.index.file
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)
    return path


def _tracks(gallery, which, damage):
    path = gallery / getattr(read_manifest(gallery).tracks, which)   # tracks-N.h5 / .faiss
    damage(path)
    return path


DAMAGE = {"segment cut at 1 KB": lambda g: _segment(g, lambda size: 1024),
          "segment cut in half": lambda g: _segment(g, lambda size: size // 2),
          "junk index": lambda g: _index(g, b"not a FAISS index " * 20),
          "missing index": lambda g: _index(g, None),
          "tracks file cut in half": lambda g: _tracks(
              g, "file", lambda p: _truncate(p, p.stat().st_size // 2)),
          "junk tracks file": lambda g: _tracks(
              g, "file", lambda p: p.write_bytes(b"not HDF5 " * 100)),
          "junk tracks index": lambda g: _tracks(
              g, "index", lambda p: p.write_bytes(b"not a FAISS index " * 20))}


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def frames_and_people(gallery):
    """Each frame's detections (boxes, scores, embeddings) keyed by (source, frame)."""
    g = open_gallery(gallery)
    emb = g.embeddings(np.arange(g.num_detections))
    return {(s, int(i)): (g.boxes[d], g.scores[d], emb[d]) for f, (s, i) in
            enumerate(zip(g.frame_source, g.frame_index)) for d in [g.detections_of(f)]}


def assert_same_frames(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        for x, y in zip(a[key], b[key]):
            np.testing.assert_allclose(x, y, atol=1e-5)


def assert_one_line_naming(result, path):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert str(path) in result.output and "gallery repair" in result.output, result.output


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_named_repaired_and_reindexed(damage, footage_gallery, synthetic_footage,
                                                random_student_checkpoint, tmp_path):
    gallery = shutil.copytree(footage_gallery, tmp_path / "g")
    path = DAMAGE[damage](gallery)
    assert_one_line_naming(run("gallery", "verify", gallery), path)
    assert_one_line_naming(run("search", "--gallery", gallery, "--hit", 0, "--out",
                               tmp_path / "r"), path)
    repaired = run("gallery", "repair", gallery)
    assert repaired.exit_code == 0, repaired.output
    assert run("gallery", "verify", gallery).exit_code == 0
    assert run("search", "--gallery", gallery, "--hit", 0, "--out",
               tmp_path / "r").exit_code == 0
    intact = frames_and_people(footage_gallery)
    if "segment" in damage:   # set aside, never deleted; its frames listed, then re-indexed
        assert (gallery / "damaged" / path.name).is_file() and not path.exists()
        assert f"dropped {path.name}" in repaired.output
        record = json.loads(next((gallery / "damaged").glob("reindex-*.json")).read_text())
        assert [s["file"] for s in record["segments"]] == [path.name]
        lost = set(intact) - set(frames_and_people(gallery))
        assert len(lost) == record["segments"][0]["frames"] > 0
        again = run(*index_args(gallery, random_student_checkpoint, synthetic_footage))
        assert f"indexed {len(lost)} new frames" in again.output, again.output
    assert_same_frames(frames_and_people(gallery), intact)
    tracks, intact_tracks = read_manifest(gallery).tracks, read_manifest(footage_gallery).tracks
    assert tracks is not None and tracks.tracks == intact_tracks.tracks   # re-linked, not dropped


def test_the_app_answers_503_naming_the_damaged_file(footage_gallery, tmp_path):
    gallery = shutil.copytree(footage_gallery, tmp_path / "g")
    path = DAMAGE["junk index"](gallery)
    client = TestClient(create_app(gallery), raise_server_exceptions=False)
    r = client.get("/api/search", params={"hit": 0})
    assert r.status_code == 503 and str(path) in r.json()["detail"], r.text
    assert "gallery repair" in r.json()["detail"]
    path = DAMAGE["segment cut in half"](gallery)
    with pytest.raises(DamagedGalleryError, match="gallery repair"):
        create_app(gallery)                     # `serve` prints this line and stops


def _ivfpq_gallery(directory):
    blocks = [fake_block([f"/v/{i}.mp4"] * 30, range(30), per_frame=3, seed=i)
              for i in range(2)]
    return fake_gallery(directory, blocks, kind="ivfpq")


def test_a_truncated_ivfpq_lists_file_is_named_and_rebuilt(tmp_path):
    gallery = _ivfpq_gallery(tmp_path / "g")
    entry = open_gallery(gallery).manifest.index
    data = gallery / "ivfpq" / entry.params["data"]
    _truncate(data, data.stat().st_size // 3)
    report = verify_gallery(gallery)
    assert not report.ok and data.name in report.lines()[0]
    with pytest.raises(DamagedGalleryError, match=data.name):
        open_gallery(gallery).index()           # refused before a search maps past its end
    r = repair_gallery(gallery)
    assert r.dropped == () and r.manifest.index.generation == entry.generation + 1
    assert verify_gallery(gallery).ok and open_gallery(gallery).index().ntotal == 180


def test_a_truncated_rescore_file_is_named_and_rebuilt(tmp_path):
    gallery = _ivfpq_gallery(tmp_path / "g")
    record = open_gallery(gallery).manifest.index.params["rescore"]
    path = gallery / "ivfpq" / record["file"]
    _truncate(path, record["bytes"] - 16)
    report = verify_gallery(gallery)
    assert not report.ok and len(report.lines()) == 1
    assert path.name in report.lines()[0] and "gallery repair" in report.lines()[0]
    g = open_gallery(gallery)
    with pytest.raises(DamagedGalleryError, match=path.name):
        g.embeddings([0])                       # one line, not a fault past the file's end
    r = repair_gallery(gallery)
    assert r.dropped == () and verify_gallery(gallery).ok
    record = r.manifest.index.params["rescore"]
    assert record["file"] == "rescore-2.f16" and record["rows"] == 180
    g = open_gallery(gallery)
    assert g.embeddings([5]).shape == (1, 8)


def test_verify_reads_every_dataset_and_repair_waits_for_an_index_run(tmp_path):
    gallery = fake_gallery(tmp_path / "g", [fake_block(["/v/a.mp4"] * 4, range(4)),
                                            fake_block(["/v/b.mp4"] * 4, range(4), seed=1)])
    assert verify_gallery(gallery).ok
    segment = open_gallery(gallery).manifest.segments[0]
    close_segment_files()           # reading keeps segments open; the damage comes from outside
    with h5py.File(gallery / SEGMENTS / segment.file, "a") as f:   # opens, but a column is gone
        del f["detections/scores"]
    report = verify_gallery(gallery)
    assert [p.file.name for p in report.problems] == [segment.file]
    assert "detections/scores" in report.problems[0].what
    writer = subprocess.Popen(   # an index run is writing (a lock of another process)
        [sys.executable, "-c", HOLD_WRITER_LOCK, str(gallery)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "writing"
        with pytest.raises(GalleryError, match="another index run"):
            repair_gallery(gallery)
    finally:
        writer.kill()
        writer.wait()
    r = repair_gallery(gallery)
    assert [d.entry.file for d in r.dropped] == [segment.file]
    assert r.dropped[0].frames == [{"source": "/v/a.mp4", "frame": i, "time": None}
                                   for i in range(4)]
    assert open_gallery(gallery).frame_source == ["/v/b.mp4"] * 4


def test_a_damaged_manifest_is_named_and_not_repaired(tmp_path):
    gallery = fake_gallery(tmp_path / "g", [fake_block(["/v/a.mp4"] * 2, range(2))])
    ok = run("gallery", "verify", gallery, "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    (gallery / "gallery.json").write_text('{"schema": "person-search-gallery", "vers')
    r = run("gallery", "verify", gallery, "--json")
    assert r.exit_code == 1
    assert json.loads(r.output)["problems"][0]["file"] == str(gallery / "gallery.json")
    r = run("gallery", "repair", gallery)
    assert r.exit_code == 1 and "gallery.json" in r.output and "needs the manifest" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_gallery_whose_every_segment_is_damaged_grows_again(tmp_path):
    gallery = fake_gallery(tmp_path / "g", [fake_block(["/v/a.mp4"] * 2, range(2))])
    (gallery / SEGMENTS / open_gallery(gallery).manifest.segments[0].file).write_bytes(b"x")
    assert repair_gallery(gallery).manifest.detections == 0
    grown = fake_gallery(gallery, [fake_block(["/v/a.mp4"] * 2, range(2))])   # index again
    assert open_gallery(grown).index().ntotal == 4 and verify_gallery(grown).ok


def test_pending_segments_are_verified_and_a_damaged_one_set_aside(tmp_path):
    gallery = fake_gallery(tmp_path / "g", [fake_block(["/v/a.mp4"] * 4, range(4))])
    writer = GalleryWriter(gallery, RunHeader(FAKE_MODEL, 8, 0.5))   # a run stopped midway
    kept = writer.add(fake_block(["/v/b.mp4"] * 3, range(3), seed=1))
    lost = writer.add(fake_block(["/v/b.mp4"] * 3, range(3, 6), seed=2))
    writer.close()
    ok = run("gallery", "verify", gallery)
    assert ok.exit_code == 0 and "2 segments (12 people) of an unfinished index run are " \
        "pending" in ok.output and "same `index` command" in ok.output, ok.output
    _truncate(gallery / SEGMENTS / lost, 1024)
    r = run("gallery", "verify", gallery)
    assert r.exit_code == 1, r.output
    assert r.output.splitlines()[0].startswith(f"{gallery / SEGMENTS / lost}: pending segment")
    assert "gallery repair" in r.output
    blocked = GalleryWriter(gallery, RunHeader(FAKE_MODEL, 8, 0.5))
    with pytest.raises(DamagedGalleryError, match=lost):   # what an `index` re-run meets
        blocked.done()
    blocked.close()
    repaired = repair_gallery(gallery)
    assert [d.entry.file for d in repaired.dropped] == [lost]
    assert (gallery / "damaged" / lost).is_file()
    assert [s.file for s in repaired.manifest.segments][1:] == [kept]   # the intact one in
    assert all(not read_pending(p).segments for p in pending_files(gallery))
    assert verify_gallery(gallery).ok and verify_gallery(gallery).pending_segments == 0
    rerun = GalleryWriter(gallery, RunHeader(FAKE_MODEL, 8, 0.5))   # embeds the lost frames
    assert {("/v/b.mp4", i) for i in range(3, 6)}.isdisjoint(rerun.done())
    rerun.close()
