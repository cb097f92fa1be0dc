"""The tracks a commit stores (:mod:`pipeline.footage.store.tracks_file`): each group's
detections linked by :func:`pipeline.footage.tracks.link_tracks`, each track pooled by
:func:`pipeline.footage.appearances.build_appearances`.

Tracks are a function of the stored detections alone, group by group (one video, or one
camera's still images). A commit links again only the groups that gained frames, each from all
of its committed detections, and keeps the other groups' tracks as the last commit stored
them; every track is then numbered by its first detection row, as ``link_tracks`` numbers them.
So a resumed, an extended and an uninterrupted run store the same tracks, and so does linking
the whole gallery at once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.footage.appearances import DEFAULT_POOLING, build_appearances
from pipeline.footage.store import (Gallery, GalleryError, Manifest, TrackTable, commit,
                                    open_gallery, read_gallery)
from pipeline.footage.store.manifest import pending_files
from pipeline.footage.tracks import NO_TRACK, link_tracks, track_groups


@dataclass
class _Tracks:
    """Tracks under construction: labels per detection and one column row per label."""

    label: np.ndarray                 # (T,) int64, NO_TRACK: none
    rows: dict                        # label -> (camera, source, start, end, frames, best, emb)
    next: int = 0                     # the next unused label


def make_track_table(gallery: Gallery, previous: TrackTable | None,
                     previous_frames: int) -> TrackTable:
    """The tracks of ``gallery`` (a commit's new manifest), reusing ``previous`` (the last
    commit's table over its first ``previous_frames`` frames) for the groups without new
    frames."""
    if previous is not None and previous.pooling != DEFAULT_POOLING:
        previous = None                # pooled another way: every track is pooled again
    tracks = _Tracks(np.full(gallery.num_detections, NO_TRACK, np.int64), {})
    if previous is not None:
        tracks.label[:len(previous.track_of)] = previous.track_of
        tracks.rows = {a: _row_of(previous, a) for a in range(len(previous))}
        tracks.next = len(previous)
    groups = track_groups(gallery.frame_source, gallery.frame_index, gallery.frame_time,
                          gallery.frame_camera)
    for frames in groups:
        if previous is None or max(frames) >= previous_frames:
            _link_group(gallery, np.asarray(frames, np.int64), tracks)
    return _numbered(tracks, DEFAULT_POOLING, gallery.embedding_dim)


def upgrade_gallery(directory) -> tuple[Manifest, bool]:
    """Link and store the tracks of a gallery made before galleries stored them (or whose
    tracks file is lost), from its stored detections: no model runs. Returns the manifest and
    whether anything was added."""
    before = open_gallery(directory).manifest
    if pending_files(directory):
        raise GalleryError(f"{directory}: an index run is unfinished; run the same `index` "
                           "command again (it finishes the run and links the tracks)")
    after = commit(directory, before.header, tracks=make_track_table)
    return after, after.tracks != before.tracks


def _row_of(table: TrackTable, a: int) -> tuple:
    return (table.camera[a], table.source[a], float(table.start[a]), float(table.end[a]),
            int(table.frames[a]), int(table.best[a]), table.embeddings[a])


def _link_group(gallery: Gallery, frames: np.ndarray, tracks: _Tracks) -> None:
    """Link one group from the segments that hold its frames; its tracks replace the group's
    old ones under new labels."""
    starts = gallery.segment_frames
    parts = np.unique(np.searchsorted(starts, frames, side="right") - 1)
    part = read_gallery(gallery.directory, replace(
        gallery.manifest, segments=tuple(gallery.manifest.segments[k] for k in parts)))
    full_row = np.concatenate([np.arange(gallery.segment_detections[k],
                                         gallery.segment_detections[k + 1]) for k in parts])
    mine = np.concatenate([gallery.detections_of(int(f)) for f in frames] +
                          [np.zeros(0, np.int64)])
    dropped = set(tracks.label[mine].tolist()) - {NO_TRACK}
    tracks.rows = {k: v for k, v in tracks.rows.items() if k not in dropped}
    tracks.label[mine] = NO_TRACK
    in_group = np.isin(full_row, mine)
    linked = link_tracks(part)
    linked[~in_group] = NO_TRACK           # other groups' frames in the same segments
    kept = linked != NO_TRACK
    local = np.full(len(linked), NO_TRACK, np.int64)
    local[kept] = np.unique(linked[kept], return_inverse=True)[1]   # 0.. in first-row order
    embeddings = np.zeros((part.num_detections, gallery.embedding_dim), np.float32)
    embeddings[in_group] = part.embeddings(np.flatnonzero(in_group))
    apps = build_appearances(part, embeddings, local)
    first, tracks.next = tracks.next, tracks.next + len(apps)
    for a, members in enumerate(apps.members):
        best = int(apps.best[a])
        tracks.label[full_row[members]] = first + a
        tracks.rows[first + a] = (
            part.cameras[int(apps.camera[a])], part.frame_source[int(part.detection_frame[best])],
            float(apps.start[a]), float(apps.end[a]), len(members), int(full_row[best]),
            apps.embeddings[a])


def _numbered(tracks: _Tracks, pooling: str, dim: int) -> TrackTable:
    """The table with tracks numbered by their first detection row."""
    labelled = np.flatnonzero(tracks.label != NO_TRACK)
    labels, first = np.unique(tracks.label[labelled], return_index=True)
    order = labels[np.argsort(labelled[first], kind="stable")]
    number = {int(label): k for k, label in enumerate(order)}
    track_of = np.full(len(tracks.label), NO_TRACK, np.int64)
    track_of[labelled] = [number[int(x)] for x in tracks.label[labelled]]
    columns = list(zip(*(tracks.rows[int(label)] for label in order))) or [()] * 7
    camera, source, start, end, frames, best, emb = columns
    return TrackTable(track_of, list(camera), list(source), np.asarray(start, np.float64),
                      np.asarray(end, np.float64), np.asarray(frames, np.int64),
                      np.asarray(best, np.int64),
                      np.asarray(emb, np.float32).reshape(len(order), dim), pooling)
