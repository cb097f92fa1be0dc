"""`index`: run a model over footage and add every detection to a gallery.

Sources are planned in the main process (video packets demuxed, nothing decoded), the frames
not yet in the gallery are decoded by DataLoader workers in groups
(:class:`pipeline.data.footage.FootageFrames`), detected in batches of frames of one size
(bf16 autocast on CUDA) and written to the gallery one chunk of about ``chunk_frames``
frames at a time (a pending segment each; the run's end commits them all and links the
detections into tracks, :mod:`pipeline.footage.track_store`), so a run killed at any point
loses at most the chunk in flight. Chunks
and batches are cut the same way whether a run starts fresh or resumes, so a resumed run
ends with the same detections as an uninterrupted one.

Damaged sources cost only what is damaged: an unreadable file is skipped, a cut-off video
keeps every frame that decodes; the report lists both (``skipped``: nothing of it got in;
``partial``: how much it lost). A run of which nothing could be indexed (every source failed)
raises :class:`NothingIndexedError` and leaves no gallery behind if it was to create one.

Under ``torchrun`` (WORLD_SIZE > 1) process r indexes sources r::world into its own pending
segments; after a barrier process 0 commits everything into one gallery and one index (an
``ivfpq`` one is trained once there, or taken from ``--ivfpq-trained``, never per process).
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.footage import (DEFAULT_EVERY, VIDEO_GROUP, FootageFrames, FrameRef,
                                   find_sources, group_frames, plan_source)
from pipeline.data.records import DatasetError
from pipeline.errors import UserError
from pipeline.engine import distributed as dist_utils
from pipeline.footage.store import FrameBlock, GalleryWriter, GalleryError, RunHeader, commit, \
    shared_training
from pipeline.footage.track_store import make_track_table
from pipeline.models.precision import autocast
from pipeline.runtime.loading import load_model
from pipeline.runtime.settings import apply_settings
from pipeline.runtime.types import Detections, RunSettings

DEFAULT_MIN_SCORE = 0.5       # as evaluate's search threshold
DEFAULT_BATCH = 4
DEFAULT_CHUNK = 64            # frames per committed segment
# tqdm's default turns a rate under 1/s into s/frame; footage people think in frames/s
PROGRESS_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
LISTED_FRAMES = 5             # lost frame numbers named per source in the run's summary


class NothingIndexedError(UserError, RuntimeError):
    """Every source of an index run failed: nothing was added (and no gallery was made)."""


@dataclass
class IndexReport:
    gallery: Path
    sources: int
    frames_planned: int
    frames_new: int
    detections_new: int
    seconds: float
    gallery_frames: int = 0
    gallery_detections: int = 0
    index_kind: str = ""
    approximate: bool = False
    skipped: list[str] = field(default_factory=list)   # sources of which nothing got in
    partial: list[str] = field(default_factory=list)   # sources that lost some frames
    rank: int = 0                      # this process under torchrun (0 commits and reports)

    @property
    def frames_per_s(self) -> float:
        return self.frames_new / self.seconds if self.seconds > 0 else 0.0


def gather_sources(specs, camera: str | None) -> list:
    """Every source the SOURCE arguments name, each path once, sorted."""
    seen = {}
    for spec in specs:
        for s in find_sources(str(spec), camera):
            seen.setdefault(s.path, s)
    return [seen[p] for p in sorted(seen)]


def plan(sources, every: float, progress: bool) -> tuple[list[FrameRef], list[str], list[str]]:
    """Frames of every source, the sources skipped (unreadable) and those that lose frames
    (a cut-off video), each reported as it is found."""
    refs, skipped, partial = [], [], []
    for s in tqdm(sources, desc="planning", unit="source", disable=not progress or
                  len(sources) < 50):
        try:
            source_plan = plan_source(s, every)
        except DatasetError as e:   # FootageError, or an image that does not decode
            skipped.append(str(e))
            tqdm.write(f"skipping {e}", file=sys.stderr)
            continue
        refs += source_plan.refs
        if source_plan.lost:
            partial.append(source_plan.lost)
            tqdm.write(f"partly: {source_plan.lost}", file=sys.stderr)
    return refs, skipped, partial


def chunk_groups(refs: list[FrameRef], groups: list[list[int]], chunk_frames: int):
    """Consecutive groups of about ``chunk_frames`` frames: the unit of one commit."""
    chunks, current, size = [], [], 0
    for g in groups:
        current.append(g)
        size += len(g)
        if size >= chunk_frames:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


class _Chunk:
    """Frames of one chunk as they come back from the workers; batched detection."""

    def __init__(self, searcher, device, batch_size: int, min_score: float, dim: int,
                 bf16: bool = False):
        self.searcher, self.device, self.bf16 = searcher, device, bf16
        self.batch_size, self.min_score, self.dim = batch_size, min_score, dim
        self.refs, self.sizes, self.previews, self.results = [], [], [], []  # results: Detections
        self._waiting: list[torch.Tensor] = []

    def add(self, ref: FrameRef, image: torch.Tensor, preview: bytes) -> None:
        size = tuple(image.shape[-2:])
        if self._waiting and (len(self._waiting) == self.batch_size or size != self.sizes[-1]):
            self._run()
        self.refs.append(ref)
        self.sizes.append(size)
        self.previews.append(preview)
        self._waiting.append(image)

    @torch.no_grad()
    def _run(self) -> None:
        images = [im.to(self.device, non_blocking=True).float().div_(255.0)
                  for im in self._waiting]
        with autocast(self.device, cpu=self.bf16):
            outs = self.searcher.detect(images)
        self.results.append(Detections.from_outputs(outs, self.dim, self.min_score))
        self._waiting = []

    def block(self) -> FrameBlock:
        if self._waiting:
            self._run()
        return FrameBlock(
            sources=[r.source for r in self.refs], frames=np.array([r.frame for r in self.refs]),
            times=np.array([np.nan if r.time is None else r.time for r in self.refs]),
            cameras=[r.camera for r in self.refs],
            widths=np.array([s[1] for s in self.sizes]), heights=np.array([s[0] for s in self.sizes]),
            previews=self.previews, detections=Detections.concatenate(self.results, self.dim))


@dataclass
class _Losses:
    """What the decoding workers could not deliver, per source: why the file does not decode
    at all, or which of its planned frames did not decode."""

    errors: dict[str, str] = field(default_factory=dict)
    frames: dict[str, list[int]] = field(default_factory=dict)
    indexed: set[str] = field(default_factory=set)

    def add(self, refs: list[FrameRef], delivered: list[bool], error: str | None) -> None:
        for ref, got in zip(refs, delivered):
            if got:
                self.indexed.add(ref.source)
            else:
                self.frames.setdefault(ref.source, []).append(ref.frame)
                if error:
                    self.errors.setdefault(ref.source, error)

    def messages(self) -> tuple[list[str], list[str]]:
        """(sources of which no frame got in, sources that lost some), one line each."""
        skipped, partial = [], []
        for source, lost in sorted(self.frames.items()):
            named = ", ".join(map(str, lost[:LISTED_FRAMES])) + (", ..." if len(lost) >
                                                                   LISTED_FRAMES else "")
            text = self.errors.get(source) or (f"{source}: {len(lost)} planned frame(s) do "
                                               f"not decode (frame {named})")
            (partial if source in self.indexed else skipped).append(text)
        return skipped, partial


def index_footage(gallery_dir, model, sources, *, camera: str | None = None,
                  every: float = DEFAULT_EVERY, device: str = "cpu",
                  batch_size: int = DEFAULT_BATCH, workers: int = 2,
                  min_score: float = DEFAULT_MIN_SCORE, index_kind: str | None = None,
                  chunk_frames: int = DEFAULT_CHUNK, progress: bool = True,
                  after_chunk: Callable[[int], None] | None = None,
                  settings: RunSettings = RunSettings(),
                  shard: tuple[int, int] = (1, 1),
                  ivfpq_trained: str | Path | None = None) -> IndexReport:
    """Build or extend the gallery at ``gallery_dir`` (see the module docstring). ``settings``:
    input size, proposals and bf16 when not as trained; the gallery records them and every
    later run and query must use the same. ``index_kind`` None keeps the gallery's.
    ``shard`` (K, N): only the K-th of every N sources (sorted), so that N machines index
    one footage into N galleries that ``gallery merge`` joins. ``ivfpq_trained``: an ivfpq
    gallery whose training this one's ivfpq index uses (checked before any frame is read),
    so that the shards merge without encoding again."""
    start = time.perf_counter()
    if ivfpq_trained is not None:
        if index_kind not in (None, "ivfpq"):
            raise GalleryError(f"--ivfpq-trained shares an ivfpq training; the run asks for "
                               f"--index {index_kind}")
        index_kind = "ivfpq"
    dev, _ = dist_utils.init_distributed(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev} requested but CUDA is not available here")
    rank, world = dist_utils.rank(), dist_utils.world_size()
    all_sources = gather_sources(sources, camera)[shard[0] - 1::shard[1]]
    searcher, info = load_model(model, dev)
    apply_settings(searcher, settings)
    header = RunHeader(replace(info, settings=settings), searcher.embedding_dim, min_score)
    training = shared_training(gallery_dir, ivfpq_trained, header) if ivfpq_trained else None
    existed = Path(gallery_dir).exists()
    writer = GalleryWriter(gallery_dir, header, rank=rank)
    try:
        refs, skipped, partial = plan(all_sources[rank::world], every, progress and rank == 0)
        done = writer.done()
        todo = [r for r in refs if (r.source, r.frame) not in done]
        frames_new, dets_new, losses = _run(writer, searcher, dev, todo, batch_size, workers,
                                            min_score, header.embedding_dim, chunk_frames,
                                            progress and rank == 0, after_chunk, settings.bf16)
    finally:
        writer.close()
    not_decoded, lost = losses.messages()
    planned, frames_new, dets_new, wanted = _sum_over_processes(
        [len(refs), frames_new, dets_new, len(todo)], dev)
    report = IndexReport(Path(gallery_dir), len(all_sources), planned, frames_new, dets_new,
                         0.0, skipped=skipped + not_decoded, partial=partial + lost, rank=rank)
    if frames_new == 0 and wanted == planned:   # none of it is in the gallery, before or now
        _nothing_indexed(Path(gallery_dir), existed, report, rank)
    if rank == 0:
        manifest = commit(gallery_dir, header, index_kind=index_kind, tracks=make_track_table,
                          training=training)
        report.gallery_frames, report.gallery_detections = manifest.frames, manifest.detections
        report.index_kind, report.approximate = manifest.index.kind, manifest.index.approximate
    dist_utils.barrier()
    report.seconds = time.perf_counter() - start
    return report


def _nothing_indexed(directory: Path, existed: bool, report: IndexReport, rank: int) -> None:
    """Every source failed: a gallery this run created is removed again (an empty gallery
    would look like a success to a script), and the run ends with NothingIndexedError."""
    dist_utils.barrier()
    if rank == 0 and not existed:
        shutil.rmtree(directory, ignore_errors=True)
    first = report.skipped[0] if report.skipped else "no frames were planned"
    more = f" (+{len(report.skipped) - 1} more, listed above)" if len(report.skipped) > 1 else ""
    kept = "the gallery is unchanged" if existed else "no gallery was written"
    raise NothingIndexedError(f"nothing could be indexed from {report.sources} source(s): "
                              f"{first}{more}; {kept}")


def _sum_over_processes(counts: list[int], device) -> list[int]:
    """The counts summed over every torchrun process (also a barrier); as given otherwise."""
    if not dist_utils.is_distributed():
        return counts
    t = torch.tensor(counts, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.tolist()]


def _run(writer, searcher, dev, todo, batch_size, workers, min_score, dim, chunk_frames,
         progress, after_chunk, bf16) -> tuple[int, int, _Losses]:
    groups = group_frames(todo, min(VIDEO_GROUP, chunk_frames))  # a group never spans chunks
    chunks = chunk_groups(todo, groups, chunk_frames)
    last_group_of_chunk = {}
    k = 0
    for c, chunk in enumerate(chunks):
        k += len(chunk)
        last_group_of_chunk[k - 1] = c
    loader = DataLoader(FootageFrames(todo, groups), batch_size=None, num_workers=workers,
                        pin_memory=dev.type == "cuda", persistent_workers=False)
    bar = tqdm(total=len(todo), unit=" frames", desc="indexing", disable=not progress,
               smoothing=0.1, bar_format=PROGRESS_FORMAT)
    frames_new = dets_new = 0
    losses = _Losses()
    current = _Chunk(searcher, dev, batch_size, min_score, dim, bf16)
    try:
        for g, (items, error) in enumerate(loader):   # error: what did not decode, or None
            if error:
                tqdm.write(f"skipping {error}", file=sys.stderr)
            for position, image, preview in items:
                current.add(todo[position], image, preview)
            delivered = {position for position, _, _ in items}
            losses.add([todo[i] for i in groups[g]], [i in delivered for i in groups[g]], error)
            bar.update(len(groups[g]))
            if g in last_group_of_chunk:
                block = current.block()
                writer.add(block)
                frames_new += len(block.sources)
                dets_new += len(block.detections.scores)
                current = _Chunk(searcher, dev, batch_size, min_score, dim, bf16)
                if after_chunk is not None:
                    after_chunk(frames_new)
    finally:
        bar.close()
    return frames_new, dets_new, losses
