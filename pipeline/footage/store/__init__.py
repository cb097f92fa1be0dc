"""The footage gallery store: every detection of a model over indexed footage, in one folder.
:mod:`.manifest` describes the layout and its typed entries, :mod:`.writer` adds segments and
commits them, :mod:`.reader` opens a committed gallery, :mod:`.verify` checks and repairs one
(:mod:`.damage`: the one-line error for a damaged file)."""
from .manifest import (MANIFEST, PENDING, SCHEMA, SCHEMA_VERSION, SEGMENTS, GalleryError, Manifest, MissingItemError,
                       ModelMismatchError, RunHeader, check_same_model, read_manifest)
from .damage import DamagedGalleryError
from .reader import Gallery, gallery_summary, open_gallery, read_gallery
from .tracks_file import TrackMaker, TrackTable, read_track_index, read_track_table
from .ondisk import Training, shared_training
from .writer import FrameBlock, GalleryWriter, commit, merge_galleries

__all__ = ["MANIFEST", "PENDING", "SCHEMA", "SCHEMA_VERSION", "SEGMENTS", "DamagedGalleryError", "FrameBlock", "Gallery",
           "GalleryError", "GalleryWriter", "Manifest", "MissingItemError", "ModelMismatchError", "RunHeader",
           "TrackMaker", "TrackTable", "Training", "check_same_model", "commit", "gallery_summary", "merge_galleries",
           "open_gallery", "read_gallery", "read_manifest", "read_track_index", "read_track_table", "shared_training"]
