"""A damaged gallery file, said in one line: which file, what is wrong, and the repair.

Reading a segment (HDF5) or an index (FAISS) that was truncated, overwritten or removed fails
deep inside h5py or FAISS; the readers and writers of this package wrap those reads in
:func:`reading_segment` / :func:`reading_index`, so a user sees one line naming the file and
``python cli.py gallery repair DIR`` (:mod:`.verify`) instead of a traceback."""
from __future__ import annotations

import contextlib
from pathlib import Path

from .manifest import GalleryError

#: what h5py and FAISS raise on a damaged or missing file (FAISS: RuntimeError; h5py: OSError,
#: KeyError for a missing dataset, ValueError / TypeError for a wrong shape or type)
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)
#: what `gallery repair` does about each kind of damaged file
SEGMENT_FIX = "sets the segment aside and lists its frames to re-index"
INDEX_FIX = "rebuilds the index from the segments"
TRACKS_FIX = "links the tracks again from the segments"


class DamagedGalleryError(GalleryError):
    """A file of a committed gallery is unreadable or disagrees with the manifest: ``path``,
    what is wrong with it (``problem``) and what `gallery repair` does about it (``fix``)."""

    def __init__(self, message: str, path: Path, problem: str, fix: str):
        super().__init__(message)
        self.path, self.problem, self.fix = Path(path), problem, fix

    def __reduce__(self):         # pickled whole (a worker process's error reaches its parent)
        return type(self), (str(self), self.path, self.problem, self.fix)


def repair_command(directory: Path) -> str:
    return f"python cli.py gallery repair {directory}"


def damaged(directory: Path, path: Path, problem: str, fix: str) -> DamagedGalleryError:
    """The one-line error for ``path`` of the gallery at ``directory``."""
    return DamagedGalleryError(f"{path}: {problem}; run `{repair_command(directory)}` (it "
                               f"{fix})", path, problem, fix)


def describe(error: BaseException) -> str:
    """The first line of a library's message, without FAISS's C++ location prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(": ", 1)[1] if text.startswith("Error in ") and ": " in text else text


@contextlib.contextmanager
def _reading(directory: Path, path: Path, what: str, fix: str):
    try:
        yield
    except READ_ERRORS as e:
        if isinstance(e, GalleryError):
            raise
        problem = f"{what} missing" if not Path(path).is_file() else \
            f"damaged {what} ({describe(e)})"
        raise damaged(directory, path, problem, fix) from None


def reading_segment(directory: Path, path: Path):
    """Context: a failed read of segment ``path`` becomes a :class:`DamagedGalleryError`."""
    return _reading(directory, path, "segment", SEGMENT_FIX)


def reading_index(directory: Path, path: Path):
    """Context: a failed read of FAISS file ``path`` becomes a :class:`DamagedGalleryError`."""
    return _reading(directory, path, "index file", INDEX_FIX)


def reading_tracks(directory: Path, path: Path):
    """Context: a failed read of tracks file ``path`` (``tracks-N.h5`` or its FAISS index)
    becomes a :class:`DamagedGalleryError`."""
    return _reading(directory, path, "tracks file", TRACKS_FIX)
