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
reid_fingerprint, config_fingerprint, created, feature_dim (the teacher's embedding size, read
as ``CacheMeta.embedding_dim``), num_images, proposals_per_image, jitter_per_box, has_flip,
float16.
"""
from __future__ import annotations

SCHEMA = "teacher-cache"
SCHEMA_VERSION = 1
EMBEDDING_ATTR = "feature_dim"  # the root attribute holding the teacher's embedding size

GROUPS = ("gt", "proposals", "jitter")
VIEWS = ("orig", "flip")
NUM_CLASSES = 2  # teacher logits: [background, person]

# Row data independent of the view: group -> {name: (trailing shape, dtype)}
SHARED = {
    "gt": {"boxes": ((4,), "float32"), "pids": ((), "int64")},
    "proposals": {"boxes": ((4,), "float32")},
    "jitter": {"boxes": ((4,), "float32"), "pids": ((), "int64")},
}
# Per-view teacher outputs; "D" stands for the teacher's embedding size.
PER_VIEW = {
    "gt": {"features": (("D",), "feature")},
    "proposals": {"logits": ((NUM_CLASSES,), "float32"), "refined_boxes": ((4,), "float32"),
                  "features": (("D",), "feature")},
    "jitter": {"features": (("D",), "feature")},
}
# A per-image entry (what CacheWriter.append takes and TeacherCache.image_targets returns) is
# one flat dict: group prefix + "_" + quantity, e.g. "proposal_refined_boxes".
PREFIX = {"gt": "gt", "proposals": "proposal", "jitter": "jitter"}

REQUIRED_ATTRS = ("dataset", "split_fingerprint", "detector_fingerprint", "reid_fingerprint",
                  "config_fingerprint", "proposals_per_image", "jitter_per_box")


def entry_key(group: str, name: str) -> str:
    """('proposals', 'refined_boxes') -> 'proposal_refined_boxes'."""
    return f"{PREFIX[group]}_{name}"


#: The key table: every key of a per-image entry, per group, in schema order.
ENTRY_KEYS = {g: tuple(entry_key(g, n) for n in (*SHARED[g], *PER_VIEW[g])) for g in GROUPS}
#: Entry keys that hold identities (int64); every other key holds float values.
INTEGER_KEYS = tuple(entry_key(g, n) for g in GROUPS for n, (_, dtype) in SHARED[g].items()
                     if dtype == "int64")


def resolve_shape(shape: tuple, embedding_dim: int) -> tuple[int, ...]:
    return tuple(embedding_dim if s == "D" else s for s in shape)


def resolve_dtype(dtype: str, float16: bool) -> str:
    if dtype == "feature":
        return "float16" if float16 else "float32"
    return dtype
