"""Tracks stored in the gallery (schema 3): made at commit, the same however the detections
got in, read by search (which links nothing), an older gallery upgraded without the model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.footage import appearances
from pipeline.footage.appearances import (NoTracksError, build_appearances, find_appearances,
                                          gallery_appearances)
from pipeline.footage.store import (MANIFEST, GalleryWriter, RunHeader, commit, open_gallery,
                                    read_track_table)
from pipeline.footage.track_store import make_track_table
from pipeline.footage.tracks import NO_TRACK, link_tracks
from footage_helpers import FAKE_MODEL, fail_the_moves_after, fake_block, fake_gallery
from tests.test_appearances import DIM, _walk_block

HEADER = RunHeader(FAKE_MODEL, DIM, 0.5)
CAM1 = dict(source="/v/cam1.mp4", camera="cam1", people=[(10, 8), (200, -8)])
CAM2 = dict(source="/v/cam2.mp4", camera="cam2", people=[(30, 6)], seed=1)


def stored(directory):
    g = open_gallery(directory)
    return g, read_track_table(directory, g.manifest.tracks)


def assert_same_table(a, b):
    assert np.array_equal(a.track_of, b.track_of)
    assert a.camera == b.camera and a.source == b.source
    for column in ("start", "end", "frames", "best"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)


def add_and_commit(directory, *blocks):
    w = GalleryWriter(directory, HEADER)
    for b in blocks:
        w.add(b)
    w.close()
    return commit(directory, HEADER, tracks=make_track_table)


def test_stored_tracks_are_link_tracks_pooled(tmp_path):
    g, table = stored(fake_gallery(tmp_path / "g", [_walk_block(**CAM1), _walk_block(**CAM2)],
                                   dim=DIM))
    assert np.array_equal(table.track_of, link_tracks(g)) and len(table) == 3
    apps = build_appearances(g, g.embeddings(np.arange(g.num_detections)))
    np.testing.assert_allclose(table.embeddings, apps.embeddings, atol=1e-6)
    assert list(table.best) == list(apps.best) and table.camera == ["cam1", "cam1", "cam2"]
    assert list(table.frames) == [6, 6, 6] and table.start[0] == 0.0 and table.end[0] == 1.25
    assert g.manifest.tracks.tracks == 3 and (g.directory / g.manifest.tracks.index).is_file()


def test_extending_keeps_the_first_source_tracks_and_matches_one_commit(tmp_path):
    once = fake_gallery(tmp_path / "once", [_walk_block(**CAM1), _walk_block(**CAM2)], dim=DIM)
    grown = fake_gallery(tmp_path / "grown", [_walk_block(**CAM1)], dim=DIM)
    _, first = stored(grown)
    add_and_commit(grown, _walk_block(**CAM2))
    g, after = stored(grown)
    old = len(first.track_of)
    assert np.array_equal(after.track_of[:old], first.track_of)      # cam1 untouched
    assert after.camera[:len(first)] == first.camera
    assert_same_table(after, stored(once)[1])
    assert np.array_equal(after.track_of, link_tracks(g))


def test_more_frames_of_a_linked_group_link_it_again(tmp_path):
    """A second commit adds frames to a group the first one linked (a camera's still images
    in two folders): that group is linked again from all of its frames, as in one commit."""
    walk = _walk_block(**CAM1, frames=8)
    halves = []
    for k, rows in enumerate((slice(0, 4), slice(4, 8))):
        b = fake_block([f"/img/{i:02d}.jpg" for i in range(8)][rows], [0] * 4,
                       cameras=["cam1"] * 4, per_frame=2, dim=DIM, size=(320, 240))
        det = walk.detections
        b.detections = type(det)(np.arange(5, dtype=np.int64) * 2, det.boxes[8 * k:8 * k + 8],
                                 det.scores[8 * k:8 * k + 8], det.embeddings[8 * k:8 * k + 8])
        halves.append(b)
    once = fake_gallery(tmp_path / "once", halves, dim=DIM)
    twice = fake_gallery(tmp_path / "twice", halves[:1], dim=DIM)
    add_and_commit(twice, halves[1])
    g, table = stored(twice)
    assert_same_table(table, stored(once)[1])
    assert np.array_equal(table.track_of, link_tracks(g)) and len(table) == 2


def test_search_reads_the_stored_tracks_and_their_index(tmp_path, monkeypatch):
    d = fake_gallery(tmp_path / "g", [_walk_block(**CAM1), _walk_block(**CAM2)], dim=DIM)
    g = open_gallery(d)
    monkeypatch.setattr(appearances, "link_tracks", None)     # search must link nothing
    apps = gallery_appearances(g)
    assert apps.index is not None and apps.index.ntotal == 3
    query = g.embeddings([0])[0]
    with_index = find_appearances(g, apps, query, exclude=(0,))
    apps.index = None                                        # the exhaustive ranking
    assert [a.to_dict() for a in with_index] == [a.to_dict() for a in
                                                 find_appearances(g, apps, query, exclude=(0,))]
    r = CliRunner().invoke(cli, ["search", "--gallery", str(d), "--hit", "0", "--out",
                                 str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "r" / "results.json").read_text())["appearances"]) == 2


def test_an_ivfpq_gallery_tracks_get_a_flat_index(tmp_path):
    d = fake_gallery(tmp_path / "g", [_walk_block(**CAM1), _walk_block(**CAM2)], dim=DIM,
                     kind="ivfpq")
    assert open_gallery(d).manifest.tracks.kind == "flat"


def _as_version_2(directory):
    """The gallery as the previous version wrote it: no tracks entry (its files left over)."""
    m = json.loads((directory / MANIFEST).read_text())
    m["version"] = 2
    del m["tracks"]
    (directory / MANIFEST).write_text(json.dumps(m))


def test_a_version_2_gallery_says_so_in_one_line_and_upgrades(tmp_path):
    d = fake_gallery(tmp_path / "g", [_walk_block(**CAM1), _walk_block(**CAM2)], dim=DIM)
    _, made = stored(d)
    _as_version_2(d)
    with pytest.raises(NoTracksError):
        gallery_appearances(open_gallery(d))
    r = CliRunner().invoke(cli, ["search", "--gallery", str(d), "--hit", "0", "--out",
                                 str(tmp_path / "r")])
    lines = r.output.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and "gallery upgrade" in lines[0], r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, NoTracksError)
    info = CliRunner().invoke(cli, ["gallery", "info", str(d)])
    assert info.exit_code == 0 and "tracks: none" in info.output, info.output
    up = CliRunner().invoke(cli, ["gallery", "upgrade", str(d)])
    assert up.exit_code == 0 and "linked 3 tracks" in up.output, up.output
    assert json.loads((d / MANIFEST).read_text())["version"] == 3
    assert_same_table(stored(d)[1], made)
    again = CliRunner().invoke(cli, ["gallery", "upgrade", str(d)])
    assert again.exit_code == 0 and "already has 3 tracks" in again.output, again.output
    info = CliRunner().invoke(cli, ["gallery", "info", "--json", str(d)])
    summary = json.loads(info.output)
    assert summary["tracks"]["tracks"] == 3 and summary["bytes"]["tracks"] > 0


def test_a_lost_tracks_file_is_made_again(tmp_path):
    d = fake_gallery(tmp_path / "g", [_walk_block(**CAM1)], dim=DIM)
    g, made = stored(d)
    (d / g.manifest.tracks.file).unlink()
    r = CliRunner().invoke(cli, ["search", "--gallery", str(d), "--hit", "0", "--out",
                                 str(tmp_path / "r")])
    assert r.exit_code != 0 and "gallery repair" in r.output, r.output
    assert CliRunner().invoke(cli, ["gallery", "repair", str(d)]).exit_code == 0
    assert_same_table(stored(d)[1], made)
    assert (stored(d)[1].track_of != NO_TRACK).all()


def test_a_gallery_without_people_stores_no_tracks(tmp_path):
    d = fake_gallery(tmp_path / "g", [fake_block(["/v/a.mp4"] * 3, [0, 1, 2], times=[0, 0.5, 1],
                                                 per_frame=0, dim=DIM)], dim=DIM)
    g, table = stored(d)
    assert len(table) == 0 and len(table.track_of) == 0 and table.embeddings.shape == (0, DIM)
    assert find_appearances(g, gallery_appearances(g), np.ones(DIM, np.float32)) == []


def test_upgrade_leaves_an_unfinished_run_to_index(tmp_path):
    d = fake_gallery(tmp_path / "g", [_walk_block(**CAM1)], dim=DIM)
    _as_version_2(d)
    w = GalleryWriter(d, HEADER)
    w.add(_walk_block(**CAM2))
    w.close()
    r = CliRunner().invoke(cli, ["gallery", "upgrade", str(d)])
    assert r.exit_code != 0 and "unfinished" in r.output and len(r.output.splitlines()) == 1
    assert open_gallery(d).manifest.tracks is None          # nothing committed


def test_a_commit_failing_at_any_file_keeps_the_last_tracks(tmp_path, monkeypatch):
    """Fail the commit at each file it moves into place (index, tracks file, tracks index,
    manifest): the gallery keeps its last complete tracks, and the next commit stores the
    same tracks as one uninterrupted commit."""
    once = fake_gallery(tmp_path / "once", [_walk_block(**CAM1), _walk_block(**CAM2)], dim=DIM)
    d = fake_gallery(tmp_path / "g", [_walk_block(**CAM1)], dim=DIM)
    _, first = stored(d)
    w = GalleryWriter(d, HEADER)
    w.add(_walk_block(**CAM2))
    w.close()
    for step in range(4):
        fail_the_moves_after(monkeypatch, step)
        with pytest.raises(OSError):
            commit(d, HEADER, tracks=make_track_table)
        monkeypatch.undo()
        assert_same_table(stored(d)[1], first)
    commit(d, HEADER, tracks=make_track_table)
    assert_same_table(stored(d)[1], stored(once)[1])
