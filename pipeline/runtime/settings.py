"""The speed settings of any searcher: the input size (the shorter side frames are resized to
before the network) and, for the student, the number of RPN proposals its RoI head scores.

A model runs as it was trained unless told otherwise. On a CPU the student's cost is mostly
its res5 head on every proposal, so fewer proposals is the first saving and a smaller input
the second; BENCHMARKS.md ("CPU inference on full-size frames", "Fast inference modes") has
frames/s and search mAP for each. Indexing footage at another size goes through
``set_input_size``.
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


def proposal_count(searcher) -> int:
    """Proposals the student's RoI head scores per image at inference."""
    if hasattr(searcher, "set_input_size"):          # OnnxSearcher: fixed in the file
        return searcher.proposals
    return int(searcher.rpn._post_nms_top_n["testing"])


def set_proposals(searcher, count: int):
    """Keep ``count`` RPN proposals per image (after the RPN's NMS) for the RoI head to score.
    PyTorch students only: an exported ONNX file has its count fixed (``cli.py export
    --proposals N``). Returns the searcher."""
    if count < 1:
        raise ValueError(f"proposals must be at least 1, got {count}")
    if hasattr(searcher, "set_input_size") or not hasattr(searcher, "rpn"):
        raise TypeError(f"{type(searcher).__name__}: the proposal count is not adjustable here "
                        "(an ONNX file fixes it at export: cli.py export --proposals N)")
    searcher.rpn._post_nms_top_n = {**searcher.rpn._post_nms_top_n, "testing": int(count)}
    return searcher


def settings_text(size: float | None = None, proposals: int | None = None,
                  bf16: bool = False) -> str:
    """How a model runs when not as trained, as a gallery records it: "size=750 proposals=100
    bf16" ("" = as trained)."""
    parts = ([f"size={int(round(size))}"] if size else []) + \
        ([f"proposals={int(proposals)}"] if proposals else []) + (["bf16"] if bf16 else [])
    return " ".join(parts)


def apply_settings(searcher, text: str) -> bool:
    """Set the input size and proposal count of :func:`settings_text`'s ``text`` on
    ``searcher``; returns whether it asks for bf16 autocast."""
    bf16 = False
    for part in text.split():
        key, _, value = part.partition("=")
        if key == "size":
            set_input_size(searcher, float(value))
        elif key == "proposals":
            set_proposals(searcher, int(value))
        elif key == "bf16" and not value:
            bf16 = True
        else:
            raise ValueError(f"unknown run setting {part!r} (expected size=N, proposals=N, bf16)")
    return bf16
