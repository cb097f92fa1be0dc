#!/usr/bin/env python
"""Cosine-similarity error of float16 stored embeddings against float32, on a gallery's own.

Every pair of (at most ``--rows``) embeddings of the gallery's segments: the similarity of the
float32 vectors against that of the same vectors rounded to float16 (as the store now writes
them) and computed in float32 (as re-scoring and the flat index compute).

    python bench/bench_float16_embeddings.py work/gallery/synthetic-footage
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.footage.store.manifest import SEGMENTS  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gallery")
    ap.add_argument("--rows", type=int, default=5000)
    args = ap.parse_args(argv)
    parts = []
    for path in sorted((Path(args.gallery) / SEGMENTS).glob("*.h5")):
        with h5py.File(path, "r") as f:
            parts.append(np.asarray(f["detections/embeddings"][()], np.float32))
    x = np.concatenate(parts)[:args.rows]
    half = x.astype(np.float16).astype(np.float32)
    err = np.abs(x @ x.T - half @ half.T)
    print(f"| embeddings | dim | pairs | max abs error | mean abs error |\n|---|---|---|---|---|\n"
          f"| {len(x):,} | {x.shape[1]} | {len(x) ** 2:,} | {err.max():.2e} | {err.mean():.2e} |")


if __name__ == "__main__":
    main()
