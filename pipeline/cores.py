"""Sharing the machine's cores between jobs that run side by side (the demo's steps, an
ablation's runs): each gets an equal share, set through the thread count its libraries read."""
from __future__ import annotations

import os


def thread_share(jobs: int) -> int:
    """Threads each of ``jobs`` side-by-side jobs gets (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def shared_env(jobs: int, base: dict | None = None) -> dict:
    """The environment of one of ``jobs`` side-by-side child processes: OMP_NUM_THREADS (read
    by PyTorch, NumPy's BLAS and FAISS) set to its share; unchanged for a single job."""
    env = dict(os.environ if base is None else base)
    if jobs > 1:
        env["OMP_NUM_THREADS"] = str(thread_share(jobs))
    return env
