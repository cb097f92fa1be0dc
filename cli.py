#!/usr/bin/env python
"""Command line of the person-search toolkit. Parses options and calls pipeline/ and cache/.

Each command imports its implementation lazily, so ``--help`` stays fast.
"""
from __future__ import annotations

import functools
import sys

import click


def friendly_errors(fn):
    """Turn the project's own input errors into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline.config import ConfigError
        from pipeline.data.records import DatasetError
        try:
            return fn(*args, **kwargs)
        except (DatasetError, ConfigError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


@click.group()
def cli():
    """Person search with knowledge distillation from a precomputed teacher cache."""


# ---------------------------------------------------------------- data (issue: foundation)


# ---------------------------------------------------------------- teachers and cache (stage one)


# ---------------------------------------------------------------- student (stage two)


# ---------------------------------------------------------------- evaluation


# ---------------------------------------------------------------- demo


if __name__ == "__main__":
    sys.exit(cli())
