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
Detections never confirmed stay in no track (id -1).

Tracks are a function of the stored detections alone, so a resumed or extended index run (the
same detections) gives the same tracks. Track ids are numbered in the order of their first
detection row.
"""
from __future__ import annotations

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

NO_TRACK = -1
LOST_TRACK_SECONDS = 1.5       # a track missed this long ends (a person walked out)
NOMINAL_FPS = 30.0             # the tracker's frame-rate reference (budgets in 30 fps frames)
MIN_IOU = 0.1                  # box overlap needed to continue a track (sparse sampling moves boxes far)
HIGH_SCORE = 0.6               # ByteTrack's first association stage; lower scores only continue
START_SCORE = 0.6              # a detection this confident may start a track


def new_tracker() -> ByteTrackTracker:
    return ByteTrackTracker(lost_track_buffer=int(round(LOST_TRACK_SECONDS * NOMINAL_FPS)),
                            frame_rate=NOMINAL_FPS, track_activation_threshold=START_SCORE,
                            minimum_consecutive_frames=2, minimum_iou_threshold=MIN_IOU,
                            high_conf_det_threshold=HIGH_SCORE)


class _Linker:
    """One group's tracker plus the bookkeeping that gives a track its first detection."""

    def __init__(self):
        self.tracker = new_tracker()
        self.spawned: dict[object, int] = {}     # tracklet -> detection row it started from

    def update(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               time: float | None, out: np.ndarray) -> None:
        """Track one frame's detections (``rows`` of the gallery); write ids into ``out``."""
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


def link_tracks(gallery) -> np.ndarray:
    """(T,) int64: each detection's track id (0.., numbered by first detection), or -1."""
    local = np.full(gallery.num_detections, NO_TRACK, np.int64)
    group_of = np.full(gallery.num_detections, -1, np.int64)
    for g, frames in enumerate(track_groups(gallery.frame_source, gallery.frame_index,
                                            gallery.frame_time, gallery.frame_camera)):
        linker = _Linker()
        for f in frames:
            rows = gallery.detections_of(f)
            group_of[rows] = g
            linker.update(rows, gallery.boxes[rows], gallery.scores[rows],
                          gallery.frame_time_or_none(f), local)
    return _number_tracks(local, group_of)


def _number_tracks(local: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """Per-group tracker ids -> one numbering over the gallery, by first detection row."""
    out = np.full(len(local), NO_TRACK, np.int64)
    ids: dict[tuple[int, int], int] = {}
    for row in np.flatnonzero(local != NO_TRACK):
        key = (int(group_of[row]), int(local[row]))
        out[row] = ids.setdefault(key, len(ids))
    return out
