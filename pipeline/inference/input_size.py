"""The input size of any searcher: the shorter side frames are resized to before the network.

A model runs at the size it was trained at unless told otherwise; a smaller size trades
accuracy for speed on CPUs (BENCHMARKS.md, "Input size": speed and search mAP per size).
Indexing footage at another size goes through ``set_input_size``.
"""
from __future__ import annotations


def proportional_max_size(min_size: float, trained_min: float, trained_max: float) -> int:
    """The longer-side cap that keeps the trained max/min proportion (900/1500 -> 600/1000)."""
    return int(round(min_size * trained_max / trained_min))


def _transform_of(searcher):
    """The resizing transform of a PyTorch searcher: the student's own, or the two-step
    teacher's detector's (its Re-ID crops come from the original frame)."""
    if hasattr(searcher, "transform"):
        return searcher.transform
    detector = getattr(searcher, "detector", None)
    if detector is not None and hasattr(detector, "transform"):
        return detector.transform
    raise TypeError(f"{type(searcher).__name__} has no input size to set")


def input_size(searcher) -> tuple[float, float]:
    """(min_size, max_size) the searcher resizes frames to now."""
    if hasattr(searcher, "set_input_size"):          # OnnxSearcher
        return searcher.min_size, searcher.max_size
    t = _transform_of(searcher)
    return float(t.min_size[-1]), float(t.max_size)


def set_input_size(searcher, min_size: float, max_size: float | None = None):
    """Resize frames so their shorter side is ``min_size`` (the longer at most ``max_size``,
    by default in the searcher's current max/min proportion). Returns the searcher."""
    if min_size <= 0 or (max_size is not None and max_size < min_size):
        raise ValueError(f"input size needs 0 < min_size <= max_size, got {min_size}, {max_size}")
    if hasattr(searcher, "set_input_size"):
        searcher.set_input_size(min_size, max_size)
        return searcher
    t = _transform_of(searcher)
    if max_size is None:
        max_size = proportional_max_size(min_size, float(t.min_size[-1]), float(t.max_size))
    t.min_size, t.max_size = (int(round(min_size)),), int(round(max_size))
    return searcher
