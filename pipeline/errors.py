"""The one base class of every error a user can fix: a config, a data folder, a file or an
option that does not fit. Its message names the thing and says what is wrong; the command
line prints it as one line, without a traceback. Each subclass also keeps the standard base
that says what kind of error it is (ValueError, RuntimeError, ...)."""
from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input, reported as one line."""


class SettingError(UserError, ValueError):
    """A run setting (input size, proposals) a model does not offer."""


def file_head(path: str | Path, size: int = 8) -> tuple[bytes, str | None]:
    """The first ``size`` bytes of ``path`` (to tell what kind of file it is), or, in a few
    words, why there are none: (b"", reason)."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
    except OSError as e:
        return b"", f"cannot be read ({e.strerror or e})"
    return head, None if head else "the file is empty"
