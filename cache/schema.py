"""The teacher cache's on-disk schema: one HDF5 file, columnar, versioned.

Layout (G = gt, proposals or jitter; V = orig or flip)::

    /images/names (M,) str   /images/width (M,)   /images/height (M,)
    /G/offsets (M+1,) int64        rows of image i are offsets[i]:offsets[i+1]
    /G/boxes (R,4) float32         x1,y1,x2,y2 in ORIGINAL image pixels, whatever the view
    /gt/pids, /jitter/pids (R,)    dataset identities, UNLABELED = -1
    /G/V/<quantity>                teacher outputs on view V (flip: the mirrored image),
                                   row-aligned with /G/boxes; box outputs in original pixels
    /identities/pids (K,) /identities/features (K,D) /identities/counts (K,)

Root attributes: SCHEMA, schema_version, dataset, split_fingerprint, detector_fingerprint,
reid_fingerprint, config_fingerprint, created, feature_dim, num_images, proposals_per_image,
jitter_per_box, has_flip, float16.
"""
from __future__ import annotations

SCHEMA = "teacher-cache"
SCHEMA_VERSION = 1

GROUPS = ("gt", "proposals", "jitter")
VIEWS = ("orig", "flip")
NUM_CLASSES = 2  # teacher logits: [background, person]

# Row data independent of the view: group -> {name: (trailing shape, dtype)}
SHARED = {
    "gt": {"boxes": ((4,), "float32"), "pids": ((), "int64")},
    "proposals": {"boxes": ((4,), "float32")},
    "jitter": {"boxes": ((4,), "float32"), "pids": ((), "int64")},
}
# Per-view teacher outputs; "D" stands for the feature size.
PER_VIEW = {
    "gt": {"features": (("D",), "feature")},
    "proposals": {"logits": ((NUM_CLASSES,), "float32"), "refined_boxes": ((4,), "float32"),
                  "features": (("D",), "feature")},
    "jitter": {"features": (("D",), "feature")},
}
# Entry keys (CONTRACTS.md): group prefix used in the flat per-image dict.
PREFIX = {"gt": "gt", "proposals": "proposal", "jitter": "jitter"}

REQUIRED_ATTRS = ("dataset", "split_fingerprint", "detector_fingerprint", "reid_fingerprint",
                  "config_fingerprint", "proposals_per_image", "jitter_per_box")


def entry_key(group: str, name: str) -> str:
    """('proposals', 'refined_boxes') -> 'proposal_refined_boxes'."""
    return f"{PREFIX[group]}_{name}"


def resolve_shape(shape: tuple, feature_dim: int) -> tuple[int, ...]:
    return tuple(feature_dim if s == "D" else s for s in shape)


def resolve_dtype(dtype: str, float16: bool) -> str:
    if dtype == "feature":
        return "float16" if float16 else "float32"
    return dtype
