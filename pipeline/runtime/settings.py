"""Putting :class:`~pipeline.runtime.types.RunSettings` on a searcher.

A model runs as it was trained unless told otherwise. On a CPU the student's cost is mostly
its res5 head on every proposal, so fewer proposals is the first saving and a smaller input
the second; BENCHMARKS.md ("CPU inference on full-size frames", "Fast inference modes") has
frames/s and search mAP for each.
"""
from __future__ import annotations

from pipeline.runtime.searcher import Searcher
from pipeline.runtime.types import RunSettings


def apply_settings(searcher: Searcher, settings: RunSettings) -> Searcher:
    """Set the input size and proposal count on ``searcher`` (bf16 is the caller's autocast).
    Returns the searcher."""
    if settings.size:
        searcher.set_input_size(float(settings.size))
    if settings.proposals:
        searcher.set_proposals(settings.proposals)
    return searcher
