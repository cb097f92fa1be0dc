"""Tracks: each camera's detections linked over time by roboflow's ``trackers`` ByteTrack.

A *group* is what one tracker follows: the frames of one video in frame order, or the still
images of one camera in file order (an image folder whose files are a camera's frames in time
order). Video frames are handed to the tracker with their timestamps, so a lost track waits
:data:`LOST_TRACK_SECONDS` whatever the sampling (``index --every``); still images step one
nominal frame each.

ByteTrack reports a new track's first detection as untracked (``tracker_id == -1``: the track
is only confirmed by a second match). That first detection is still the track's: right after
an update a new tracklet's state is the box it was spawned from, so :class:`_Linker` notes the
detection with exactly that box and hands it the track id once the tracker confirms it.
ByteTrack never confirms a walker whose box moves past its own width between indexed frames
(``index --every 1``); :func:`link_tracks` hands each such detection to the stitching below as
a fragment of its own, so the embeddings link what box motion cannot.

Only detections scoring at least :data:`TRACK_SCORE_RATIO` times their group's top score are
tracked (:func:`tracked`). On the demo's footage the student's lower-scoring boxes mostly frame
static clutter or half a person, and a track that adopts them becomes a row that outranks the
walkers (``bench/bench_appearances.py``: median score 0.58-0.77 for boxes framing nobody against
0.87-0.90 for boxes framing a walker, on worlds 3-5). The gate is a share of the group's own top
score, not a fixed score, so a model with another score scale (a less confident teacher, a
random student indexed at ``--min-score 0``) keeps its tracks; and it is each group's own, so
tracks stay a function of that group's detections (an index run that adds a camera leaves the
other cameras' tracks as they were). The student's top score per video is 0.92-0.98 on worlds
0-11, so 0.86 of it sits near 0.8 there (chosen on worlds 3-20). Untracked detections stay
searchable (``search --by detection``).

Box motion alone links different people when sampling is sparse (``index --every 1``: walkers
move most of a box width between indexed frames), so :func:`link_tracks` then uses the
detections' embeddings (measured in ``bench/bench_appearances.py``; ``trackers`` 2.6.1 has no
tracker that takes embeddings):

1. *split*: walking a motion track (or a lone tracked detection) in time order, a detection
   whose cosine similarity to the score-weighted pool of the fragment so far is below
   :data:`SAME_PERSON` starts a new fragment (the box moved onto someone else);
2. *stitch*: in time order, each fragment joins the earlier track of its group whose pool it is
   most similar to (at least :data:`SAME_PERSON`), when they share no frame and the gap between
   them is at most :data:`STITCH_GAP_SECONDS` (a walker the tracker lost and restarted);
   otherwise it starts a track;
3. a track of fewer than :data:`MIN_TRACK_DETECTIONS` detections is dropped (a lone box is
   more often half a person or clutter than a visit, and a one-box row has no pool to steady
   it).

Tracks are a function of each group's stored detections alone (its score gate included), so a
resumed or extended index run (the same detections) gives the same tracks. Track ids are
numbered in the order of their first detection row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.arrays import l2_normalize

NO_TRACK = -1
LOST_TRACK_SECONDS = 1.5       # a track missed this long ends (a person walked out)
NOMINAL_FPS = 30.0             # the tracker's frame-rate reference (budgets in 30 fps frames)
MIN_IOU = 0.1                  # box overlap needed to continue a track (sparse sampling moves boxes far)
TRACK_SCORE_RATIO = 0.86       # under this share of its group's top score: in no track
MIN_TRACK_DETECTIONS = 2       # a linked track with fewer detections is no appearance
SAME_PERSON = 0.5              # cosine to a fragment's pool: below it, another person (split/stitch)
STITCH_GAP_SECONDS = 5.0       # a lost walker's fragments this far apart may still be one track


def new_tracker():
    """ByteTrack for the detections :func:`tracked` keeps: every one of them may start or
    continue a track (its own score thresholds are absolute, so they are not used)."""
    # imported here: ``trackers`` pulls in supervision (1.4 s), which no other command needs
    from trackers import ByteTrackTracker
    return ByteTrackTracker(lost_track_buffer=int(round(LOST_TRACK_SECONDS * NOMINAL_FPS)),
                            frame_rate=NOMINAL_FPS, track_activation_threshold=0.0,
                            minimum_consecutive_frames=2, minimum_iou_threshold=MIN_IOU,
                            high_conf_det_threshold=0.0)


def tracked(scores: np.ndarray, ratio: float = TRACK_SCORE_RATIO) -> np.ndarray:
    """(n,) bool: which of one group's (n,) detection scores are tracked, those at least
    ``ratio`` times the group's top score (relative, so a model's score scale does not matter)."""
    scores = np.asarray(scores, np.float64)
    return scores >= ratio * scores.max(initial=0.0)


class _Linker:
    """One group's tracker plus the bookkeeping that gives a track its first detection."""

    def __init__(self):
        self.tracker = new_tracker()
        self.spawned: dict[object, int] = {}     # tracklet -> detection row it started from

    def update(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               time: float | None, out: np.ndarray) -> None:
        """Track one frame's detections (``rows`` of the gallery); write ids into ``out``."""
        import supervision as sv   # loaded with ``trackers`` by new_tracker
        dets = sv.Detections(xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
                             confidence=np.asarray(scores, np.float32),
                             data={"row": np.asarray(rows, np.int64)})
        result = self.tracker.update(dets, timestamp=time)
        untracked = {}
        for row, box, tid in zip(result.data.get("row", []), result.xyxy, result.tracker_id):
            if tid != NO_TRACK:
                out[row] = tid
            else:
                untracked[np.asarray(box, np.float32).tobytes()] = int(row)
        for tracklet in self.tracker.tracks:
            if tracklet not in self.spawned:    # started this frame from an untracked box
                key = np.asarray(tracklet.get_state_bbox(), np.float32).tobytes()
                self.spawned[tracklet] = untracked.get(key, NO_TRACK)
            row = self.spawned[tracklet]
            if tracklet.tracker_id != NO_TRACK and row != NO_TRACK:
                out[row] = tracklet.tracker_id
                self.spawned[tracklet] = NO_TRACK
        alive = set(self.tracker.tracks)
        self.spawned = {t: r for t, r in self.spawned.items() if t in alive}


def track_groups(frame_source, frame_index, frame_time, frame_camera) -> list[list[int]]:
    """Frame rows per group (see the module docstring), each in time order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for f, (source, time, camera) in enumerate(zip(frame_source, frame_time, frame_camera)):
        key = ("video", source) if not np.isnan(time) else ("images", camera)
        groups.setdefault(key, []).append(f)
    return [sorted(rows, key=lambda f: (frame_source[f], int(frame_index[f])))
            for _, rows in sorted(groups.items())]


@dataclass
class MotionTracks:
    """ByteTrack's output: ``local`` (T,) each detection's tracker id within its group (-1:
    none), ``group_of`` (T,) its group, ``order`` the detection rows in tracking order (group
    by group, each in time order), ``clock`` (T,) seconds on its group's time axis, ``tracked``
    (T,) whether it passed its group's score gate (:func:`tracked`)."""

    local: np.ndarray
    group_of: np.ndarray
    order: list[int] = field(default_factory=list)
    clock: np.ndarray | None = None
    tracked: np.ndarray | None = None


def motion_tracks(gallery, gate=tracked) -> MotionTracks:
    """Each group's detections that pass its score ``gate`` linked by ByteTrack on box motion
    alone."""
    n = gallery.num_detections
    out = MotionTracks(np.full(n, NO_TRACK, np.int64), np.full(n, -1, np.int64),
                       clock=np.zeros(n, np.float64), tracked=np.zeros(n, bool))
    for g, frames in enumerate(track_groups(gallery.frame_source, gallery.frame_index,
                                            gallery.frame_time, gallery.frame_camera)):
        rows_of = [gallery.detections_of(f) for f in frames]
        mine = np.concatenate(rows_of + [np.zeros(0, np.int64)])
        out.tracked[mine] = gate(gallery.scores[mine])
        linker = _Linker()
        for step, (f, rows) in enumerate(zip(frames, rows_of)):
            time = gallery.frame_time_or_none(f)
            out.group_of[rows] = g
            out.clock[rows] = step / NOMINAL_FPS if time is None else time
            out.order.extend(int(r) for r in rows)
            rows = rows[out.tracked[rows]]
            linker.update(rows, gallery.boxes[rows], gallery.scores[rows], time, out.local)
    return out


def link_tracks(gallery, embeddings: np.ndarray | None = None) -> np.ndarray:
    """(T,) int64: each detection's track id (0.., numbered by first detection), or -1:
    ByteTrack's motion tracks split and stitched by the detections' (T, D) ``embeddings``
    (read from the gallery when not given; module docstring)."""
    motion = adopt_unconfirmed(motion_tracks(gallery))
    if embeddings is None:
        embeddings = gallery.embeddings(np.arange(gallery.num_detections))
    fragments = split_by_appearance(motion, embeddings, gallery.scores)
    stitched = stitch_fragments(fragments, motion, embeddings, gallery.scores,
                                gallery.detection_frame)
    return number_tracks(drop_short_tracks(stitched), motion.group_of)


def motion_track_ids(gallery) -> np.ndarray:
    """(T,) ByteTrack's tracks alone, numbered as :func:`link_tracks` numbers its own."""
    motion = motion_tracks(gallery)
    return number_tracks(motion.local, motion.group_of)


def adopt_unconfirmed(motion: MotionTracks) -> MotionTracks:
    """``motion`` with each tracked detection ByteTrack never confirmed as a motion track of
    its own (a new id in its group), so that stitching may join it by embedding."""
    lone = np.flatnonzero((motion.local == NO_TRACK) & motion.tracked)
    local = motion.local.copy()
    local[lone] = local.max(initial=NO_TRACK) + 1 + np.arange(len(lone))
    return MotionTracks(local, motion.group_of, motion.order, motion.clock, motion.tracked)


def split_by_appearance(motion: MotionTracks, embeddings: np.ndarray, scores: np.ndarray,
                        threshold: float = SAME_PERSON) -> np.ndarray:
    """(T,) fragment ids (-1: no track): each motion track cut where a detection's embedding
    disagrees with the score-weighted pool of its fragment so far."""
    out = np.full(len(motion.local), NO_TRACK, np.int64)
    pools: dict[tuple[int, int], tuple[np.ndarray, int]] = {}   # motion track -> (sum, fragment)
    fragments = 0
    for row in motion.order:
        if motion.local[row] == NO_TRACK:
            continue
        key = (int(motion.group_of[row]), int(motion.local[row]))
        total, fragment = pools.get(key, (None, NO_TRACK))
        if total is None or _cosine(total, embeddings[row]) < threshold:
            total, fragment = np.zeros(embeddings.shape[1], np.float64), fragments
            fragments += 1
        pools[key] = (total + scores[row] * embeddings[row], fragment)
        out[row] = fragment
    return out


@dataclass
class _Stitched:
    """A track being stitched: its pooled (unnormalised) embedding, frames and last time."""

    group: int
    total: np.ndarray
    frames: set
    end: float


def stitch_fragments(fragment_of: np.ndarray, motion: MotionTracks, embeddings: np.ndarray,
                     scores: np.ndarray, detection_frame: np.ndarray,
                     threshold: float = SAME_PERSON,
                     max_gap: float = STITCH_GAP_SECONDS) -> np.ndarray:
    """(T,) track ids: fragments joined, in order of their first detection in time, to the
    most similar earlier track of their group (module docstring)."""
    members: dict[int, list[int]] = {}          # in order of each fragment's first detection
    for row in motion.order:
        if fragment_of[row] != NO_TRACK:
            members.setdefault(int(fragment_of[row]), []).append(row)
    out = np.full(len(fragment_of), NO_TRACK, np.int64)
    tracks: list[_Stitched] = []
    active: list[int] = []                      # tracks of this group that may still continue
    for rows in members.values():
        total = (scores[rows, None] * embeddings[rows]).sum(0)
        frames = set(detection_frame[rows].tolist())
        start, group = motion.clock[rows[0]], int(motion.group_of[rows[0]])
        active = [k for k in active if tracks[k].group == group and start - tracks[k].end <= max_gap]
        pooled = l2_normalize(total[None])[0]
        fits = [(_cosine(tracks[k].total, pooled), k) for k in active
                if not tracks[k].frames & frames]
        similarity, k = max(fits, key=lambda fit: fit[0], default=(-1.0, 0))  # ties: earliest
        if similarity < threshold:
            k = len(tracks)
            tracks.append(_Stitched(group, np.zeros_like(total), set(), start))
            active.append(k)
        track = tracks[k]
        track.total, track.frames = track.total + total, track.frames | frames
        track.end = max(track.end, float(motion.clock[rows].max()))
        out[rows] = k
    return out


def _cosine(total: np.ndarray, embedding: np.ndarray) -> float:
    """Cosine similarity of a pooled (unnormalised) sum with a unit-norm embedding."""
    return float(total @ embedding / max(float(np.linalg.norm(total)), 1e-12))


def drop_short_tracks(track_of: np.ndarray, min_detections: int = MIN_TRACK_DETECTIONS
                      ) -> np.ndarray:
    """``track_of`` with the tracks of fewer than ``min_detections`` detections unlinked."""
    linked = track_of != NO_TRACK
    ids, counts = np.unique(track_of[linked], return_counts=True)
    return np.where(np.isin(track_of, ids[counts < min_detections]), NO_TRACK, track_of)


def number_tracks(local: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """Per-group tracker ids -> one numbering over the gallery, by first detection row."""
    out = np.full(len(local), NO_TRACK, np.int64)
    ids: dict[tuple[int, int], int] = {}
    for row in np.flatnonzero(local != NO_TRACK):
        key = (int(group_of[row]), int(local[row]))
        out[row] = ids.setdefault(key, len(ids))
    return out
