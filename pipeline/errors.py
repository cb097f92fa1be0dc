"""The one base class of every error a user can fix: a config, a data folder, a file or an
option that does not fit. Its message names the thing and says what is wrong; the command
line prints it as one line, without a traceback. Each subclass also keeps the standard base
that says what kind of error it is (ValueError, RuntimeError, ...)."""
from __future__ import annotations


class UserError(Exception):
    """Bad input, reported as one line."""
