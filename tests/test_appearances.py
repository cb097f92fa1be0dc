"""Tracks (roboflow's ByteTrack), appearances (pooled embeddings), re-ranking and their scoring."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.footage.appearances import build_appearances, pool
from pipeline.footage.rerank import expand_query, k_reciprocal_rerank, multi_query
from pipeline.footage.ranking import SearchFilter
from pipeline.footage.search import Query, QueryError, other_cameras_filter, search_command
from pipeline.footage.scoring import _visit_ap, score_appearances, track_metrics
from pipeline.footage.store import open_gallery
from pipeline.footage.tracks import NO_TRACK, link_tracks, motion_track_ids
from pipeline.runtime.types import Detections
from tests.footage_helpers import fake_block, fake_gallery

DIM = 8


def _walk_block(source, camera, people, frames=6, dt=0.25, dim=DIM, seed=0):
    """Each of ``people`` ((x0, step) in pixels per frame) walks right across ``frames``
    frames of one video; embeddings: one direction per person plus a little noise."""
    g = np.random.default_rng(seed)
    looks = np.eye(dim, dtype=np.float32)
    boxes, scores, embs = [], [], []
    for f in range(frames):
        for p, (x0, step) in enumerate(people):
            x = x0 + step * f
            boxes.append([x, 20 + 40 * p, x + 20, 60 + 40 * p])
            scores.append(0.9)
            embs.append(looks[p] + 0.05 * g.standard_normal(dim))
    block = fake_block([source] * frames, range(frames), times=np.arange(frames) * dt,
                       cameras=[camera] * frames, per_frame=len(people), dim=dim,
                       size=(320, 240))
    block.detections = Detections(np.arange(frames + 1, dtype=np.int64) * len(people),
                                  np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                                  np.asarray(embs, np.float32))
    return block


def _two_walker_gallery(tmp_path):
    blocks = [_walk_block("/v/cam1.mp4", "cam1", [(10, 8), (200, -8)]),
              _walk_block("/v/cam2.mp4", "cam2", [(30, 6)], seed=1)]
    return open_gallery(fake_gallery(tmp_path / "g", blocks, dim=DIM))


def test_each_walk_is_one_track_first_detection_included(tmp_path):
    gallery = _two_walker_gallery(tmp_path)
    tracks = link_tracks(gallery)
    assert (tracks != NO_TRACK).all()        # a track's first (unconfirmed) detection is its own
    assert len(set(tracks.tolist())) == 3    # two walks on cam1, one on cam2
    cam1 = tracks[:12].reshape(6, 2)
    assert (cam1[:, 0] == cam1[0, 0]).all() and (cam1[:, 1] == cam1[0, 1]).all()
    assert cam1[0, 0] != cam1[0, 1]
    assert tracks[0] == 0                    # numbered by first detection


def test_tracks_are_the_same_whatever_the_segments(tmp_path):
    """Tracks depend on the stored detections only: a gallery committed in other chunks
    (a resumed run) links them the same way."""
    whole = _two_walker_gallery(tmp_path)
    a = _walk_block("/v/cam1.mp4", "cam1", [(10, 8), (200, -8)])
    halves = [fake_block(a.sources[:3], a.frames[:3], times=a.times[:3], cameras=a.cameras[:3],
                         per_frame=2, dim=DIM, size=(320, 240)),
              fake_block(a.sources[3:], a.frames[3:], times=a.times[3:], cameras=a.cameras[3:],
                         per_frame=2, dim=DIM, size=(320, 240))]
    for k, half in enumerate(halves):
        d = a.detections
        rows = slice(6 * k, 6 * (k + 1))
        half.detections = Detections(np.arange(4, dtype=np.int64) * 2, d.boxes[rows],
                                     d.scores[rows], d.embeddings[rows])
    split = open_gallery(fake_gallery(tmp_path / "split", [halves[1], halves[0],
                                       _walk_block("/v/cam2.mp4", "cam2", [(30, 6)], seed=1)],
                                      dim=DIM))
    assert np.array_equal(link_tracks(split), link_tracks(whole))


def _scripted_block(source, camera, people_per_frame, dt=0.25, dim=DIM, seed=0):
    """One video whose frame f shows ``people_per_frame[f]``: (x, y, look[, score]) boxes
    20x40 px scoring 0.9 unless given, embeddings one direction per look plus a little noise
    (a frame may show nobody)."""
    g = np.random.default_rng(seed)
    looks = np.eye(dim, dtype=np.float32)
    n = len(people_per_frame)
    flat = [person for people in people_per_frame for person in people]
    block = fake_block([source] * n, range(n), times=np.arange(n) * dt, cameras=[camera] * n,
                       per_frame=1, dim=dim, size=(320, 240))
    block.detections = Detections(
        np.cumsum([0] + [len(p) for p in people_per_frame]).astype(np.int64),
        np.asarray([[x, y, x + 20, y + 40] for x, y, *_ in flat], np.float32).reshape(-1, 4),
        np.asarray([(person + (0.9,))[3] for person in flat], np.float32),
        np.asarray([looks[k] + 0.05 * g.standard_normal(dim) for _, _, k, *_ in flat],
                   np.float32).reshape(-1, dim))
    return block


def test_a_motion_track_that_changes_person_is_split(tmp_path):
    """Person 0 walks out of a box path that person 1 walks on at once: ByteTrack links the
    boxes into one track, the embeddings split it where the look changes."""
    frames = [[(10 + 8 * f, 20, 0 if f < 4 else 1)] for f in range(8)]
    gallery = open_gallery(fake_gallery(tmp_path / "g", [_scripted_block("/v/c.mp4", "cam1",
                                                                          frames)], dim=DIM))
    assert len(set(motion_track_ids(gallery).tolist())) == 1     # box motion alone: one track
    tracks = link_tracks(gallery)
    assert (tracks[:4] == tracks[0]).all() and (tracks[4:] == tracks[4]).all()
    assert tracks[0] != tracks[4] and (tracks != NO_TRACK).all()


def test_a_lost_walker_is_stitched_back_but_not_to_someone_else(tmp_path):
    """Person 0 is hidden for 2 s (longer than ByteTrack waits), then walks on; person 1
    appears only after the gap: person 0's two motion tracks are one track, person 1's not."""
    walk = lambda f: (10 + 8 * f, 20, 0)  # noqa: E731
    frames = ([[walk(f)] for f in range(4)] + [[] for _ in range(8)]
              + [[walk(f), (200, 150, 1)] for f in range(12, 16)])
    gallery = open_gallery(fake_gallery(tmp_path / "g", [_scripted_block("/v/c.mp4", "cam1",
                                                                          frames)], dim=DIM))
    person0 = np.array([0, 1, 2, 3, 4, 6, 8, 10])
    assert len(set(motion_track_ids(gallery)[person0].tolist())) == 2
    tracks = link_tracks(gallery)
    assert len(set(tracks[person0].tolist())) == 1
    assert set(tracks[[5, 7, 9, 11]].tolist()) == {tracks[5]} and tracks[5] != tracks[0]


def test_low_scoring_and_lone_boxes_are_in_no_track(tmp_path):
    """A static box scoring well below the walker in every frame (the student's clutter: under
    TRACK_SCORE_RATIO of the video's top score) is tracked by nobody; a walker's one frame that
    looks like someone else (half a box) is split off alone and dropped, the walker's other
    frames stay one track."""
    frames = [[(10 + 8 * f, 20, 3 if f == 3 else 0), (250, 150, 2, 0.65)] for f in range(8)]
    gallery = open_gallery(fake_gallery(tmp_path / "g", [_scripted_block("/v/c.mp4", "cam1",
                                                                          frames)], dim=DIM))
    tracks = link_tracks(gallery)
    walker, clutter, odd = np.array([0, 2, 4, 8, 10, 12, 14]), np.arange(1, 16, 2), 6
    assert (tracks[clutter] == NO_TRACK).all() and tracks[odd] == NO_TRACK
    assert set(tracks[walker].tolist()) == {0}


def _scaled(block, factor):
    """``block`` as a model with another score scale would detect it: every score x factor."""
    d = block.detections
    block.detections = Detections(d.offsets, d.boxes, d.scores * np.float32(factor), d.embeddings)
    return block


def test_the_score_gate_follows_the_models_scale(tmp_path):
    """A model whose scores are all 0.3 times another's (no box of it scores 0.8) gets the
    same tracks: the gate is a share of the video's top score, not a fixed score."""
    frames = [[(10 + 8 * f, 20, 0), (250, 150, 2, 0.65)] for f in range(8)]
    tracks = [link_tracks(open_gallery(fake_gallery(
        tmp_path / f"g{factor}", [_scaled(_scripted_block("/v/c.mp4", "cam1", frames), factor)],
        dim=DIM))) for factor in (1.0, 0.3)]
    assert (tracks[0][0::2] == 0).all() and (tracks[0][1::2] == NO_TRACK).all()
    np.testing.assert_array_equal(tracks[1], tracks[0])


def test_the_score_gate_is_each_videos_own(tmp_path):
    """A camera's tracks do not depend on another camera's scores (so an index run that adds
    a camera keeps the tracks it stored): a walker scoring 0.4 where the other video's walker
    scores 0.95 is still tracked."""
    walk = [[(10 + 8 * f, 20, 0, 0.4)] for f in range(6)]
    alone = link_tracks(open_gallery(fake_gallery(
        tmp_path / "alone", [_scripted_block("/v/a.mp4", "cam1", walk)], dim=DIM)))
    both = link_tracks(open_gallery(fake_gallery(
        tmp_path / "both", [_scripted_block("/v/a.mp4", "cam1", walk),
                            _scripted_block("/v/b.mp4", "cam2",
                                            [[(10 + 8 * f, 20, 1, 0.95)] for f in range(6)])],
        dim=DIM)))
    assert (alone == 0).all()
    np.testing.assert_array_equal(both[:6], alone)


def test_a_walker_too_fast_for_box_motion_is_linked_by_embedding(tmp_path):
    """Boxes 20 px wide moving 40 px between indexed frames never overlap, so ByteTrack
    confirms neither walker; their confident detections are stitched by look, one track each."""
    frames = [[(10 + 40 * f, 20, 0), (290 - 40 * f, 150, 1)] for f in range(6)]
    gallery = open_gallery(fake_gallery(tmp_path / "g", [_scripted_block("/v/c.mp4", "cam1",
                                                                          frames)], dim=DIM))
    assert (motion_track_ids(gallery) == NO_TRACK).all()
    tracks = link_tracks(gallery)
    assert set(tracks[0::2].tolist()) == {0} and set(tracks[1::2].tolist()) == {1}


def test_appearances_pool_their_tracks(tmp_path):
    gallery = _two_walker_gallery(tmp_path)
    emb = gallery.embeddings(np.arange(gallery.num_detections))
    apps = build_appearances(gallery, emb)
    assert len(apps) == 3
    assert [len(m) for m in apps.members] == [6, 6, 6]
    assert np.allclose(np.linalg.norm(apps.embeddings, axis=1), 1, atol=1e-5)
    assert np.argmax(apps.embeddings[0]) == 0 and np.argmax(apps.embeddings[1]) == 1
    assert apps.start[0] == 0.0 and apps.end[0] == 1.25
    assert list(apps.camera) == [0, 0, 1]


def test_pooling_choices():
    e = np.array([[1, 0], [0, 1]], np.float32)
    assert np.allclose(pool(e, np.array([0.9, 0.1]), "best"), [1, 0])
    assert np.allclose(pool(e, np.array([0.9, 0.1]), "mean"), [2 ** -0.5] * 2)
    weighted = pool(e, np.array([0.9, 0.1]), "score")
    assert weighted[0] > weighted[1] > 0


def test_query_expansion_and_multi_query():
    cands = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32)
    q = np.array([0.9, 0.43589, 0], np.float32)
    expanded = expand_query(q, cands, k=2, min_similarity=0.5)
    assert expanded[2] == 0 and np.isclose(np.linalg.norm(expanded), 1)   # the far one not used
    assert np.allclose(multi_query(cands[:2]), (cands[0] + cands[1]) / np.linalg.norm(cands[0] + cands[1]))


def test_k_reciprocal_favours_mutual_neighbours():
    """A candidate that the query's neighbours agree on outranks one as close to the query
    alone but sitting in another cluster."""
    g = np.random.default_rng(0)
    a = g.standard_normal(16)
    b = g.standard_normal(16)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    cluster_a = [unit(a + 0.3 * g.standard_normal(16)) for _ in range(5)]
    cluster_b = [unit(b + 0.3 * g.standard_normal(16)) for _ in range(5)]
    cands = np.array(cluster_a + cluster_b, np.float32)
    query = unit(a + 0.3 * g.standard_normal(16)).astype(np.float32)
    scores = k_reciprocal_rerank(query, cands, k1=4, k2=2)
    assert scores.shape == (10,)
    assert scores[:5].min() > scores[5:].max()


def test_visit_ap_counts_each_visit_once():
    assert _visit_ap(["c2", "c2", None, "c3"], 2) == (1 + 2 / 3) / 2
    assert _visit_ap([None, "c2"], 1) == 0.5
    assert _visit_ap([None], 1) == 0.0


class _Truth:
    """Annotations: the walkers of _two_walker_gallery as pids 1, 2 (cam1) and 1 (cam2)."""

    def __init__(self, gallery):
        self.gallery = gallery

    def people(self, source, frame):
        rows = self.gallery.detections_of(self.gallery.find_frame(source, frame))
        pids = [1, 2] if "cam1" in source else [1]
        return self.gallery.boxes[rows], np.asarray(pids, np.int64)

    def identity(self, source, frame, box, min_iou=0.5):
        boxes, pids = self.people(source, frame)
        return int(pids[int(np.argmin(np.abs(boxes - box).sum(1)))])


def test_scores_tracks_with_motmetrics_and_appearance_search(tmp_path):
    gallery = _two_walker_gallery(tmp_path)
    truth = _Truth(gallery)
    tracks = link_tracks(gallery)
    metrics = track_metrics(gallery, tracks, truth)
    assert metrics.loc["OVERALL", "idf1"] == 1.0 and metrics.loc["OVERALL", "num_switches"] == 0
    broken = tracks.copy()
    broken[6:12] = 99                         # cam1 track ids swapped mid-walk
    assert track_metrics(gallery, broken, truth).loc["OVERALL", "num_switches"] > 0
    apps = build_appearances(gallery, gallery.embeddings(np.arange(gallery.num_detections)), tracks)
    score = score_appearances(gallery, apps, truth)
    assert score.queries == 12                # walker 1's detections (walker 2 is on one camera)
    assert score.top1 == 1.0 and score.mean_ap == 1.0
    assert score.all_queries == 12 and score.all_top1 == 1.0
    untracked = tracks.copy()
    untracked[12:] = NO_TRACK                 # cam2's walk in no appearance: cam1's queries miss
    apps = build_appearances(gallery, gallery.embeddings(np.arange(gallery.num_detections)),
                             untracked)
    score = score_appearances(gallery, apps, truth)
    assert (score.queries, score.top1) == (6, 1.0)
    assert (score.all_queries, score.all_top1) == (12, 0.5)


def test_search_by_appearance_leaves_out_the_query_own_and_keeps_other_cameras(tmp_path):
    gallery = _two_walker_gallery(tmp_path)
    payload, page = search_command(gallery.directory, tmp_path / "out", hit=0)
    rows = payload["appearances"]
    assert [(a["camera"], a["frames"]) for a in rows] == [("cam2", 6), ("cam1", 6)]  # own walk out
    assert set(rows[0]) == {"rank", "similarity", "camera", "source", "start", "end", "frames",
                            "best", "same_person", "likely"}
    assert rows[0]["start"] == 0.0 and rows[0]["end"] == 1.25
    assert gallery.frame_camera[gallery.detection_frame[rows[0]["best"]["hit"]]] == "cam2"
    assert payload["hits"]                                  # detections still listed
    page_text = page.read_text()
    assert 'id="track-1"' in page_text and 'class="interval"' in page_text
    other, _ = search_command(gallery.directory, tmp_path / "out2", hit=0, other_cameras=True)
    assert [a["camera"] for a in other["appearances"]] == ["cam2"]
    assert {h["camera"] for h in other["hits"]} == {"cam2"}
    plain, _ = search_command(gallery.directory, tmp_path / "out3", hit=0, by="detection")
    assert "appearances" not in plain


def test_other_cameras_needs_a_query_with_a_camera(tmp_path):
    gallery = _two_walker_gallery(tmp_path)
    query = Query("crop", np.ones(DIM, np.float32), b"", [0, 0, 1, 1])
    with pytest.raises(QueryError, match="other-cameras"):
        other_cameras_filter(gallery, query, SearchFilter())
