"""Datasets: readers for PRW and CUHK-SYSU, the synthetic world, transforms."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from .cuhk_sysu import read_cuhk_sysu
from .prw import read_prw
from .published import missing_release
from .records import DATASETS, DatasetError, PersonSearchData
from .synthetic import SyntheticWorldError, make_synthetic, marked_style, parse_size, style_named

READERS = {"prw": read_prw, "cuhk-sysu": read_cuhk_sysu}


def read_dataset(name: str, root: str | Path, *, train: bool = True) -> PersonSearchData:
    """Read a released dataset: ``name`` is "prw" or "cuhk-sysu"; ``root`` its top folder.

    ``train=False`` leaves the training split out (empty): evaluation reads the test split only.
    """
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if not Path(root).exists():
        raise DatasetError(missing_release(name, root))
    return READERS[name](root, train=train)


def ensure_dataset(data_cfg, say: Callable[[str], None] = print) -> None:
    """Make sure ``data_cfg.root`` (a :class:`~pipeline.config.data.DataConfig`) holds data.

    A missing root is made when the config describes a synthetic world (``data.synthetic``),
    telling ``say`` so; a missing real release is a DatasetError saying where it goes. A
    synthetic world already there is used as it is, unless it was drawn in another style than
    the config's: that is a DatasetError rather than a silent mix of worlds."""
    root = Path(data_cfg.root)
    world = data_cfg.synthetic
    _check_style(root, world)
    if root.exists():
        return
    if data_cfg.dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {data_cfg.dataset!r}; expected one of {DATASETS}")
    if world is None:
        raise DatasetError(missing_release(data_cfg.dataset, root))
    cameras = "" if world.cameras is None else f" --cameras {world.cameras}"
    say(f"{root} does not exist: making the synthetic {data_cfg.dataset} world of the config "
        f"there (`python cli.py make-synthetic --format {data_cfg.dataset} --out {root} "
        f"--identities {world.identities} --images {world.images} --size {world.size}"
        f"{cameras} --seed {world.seed} --style {world.style}`)")
    # Made beside the root and renamed into place, so that commands started together (the
    # two teachers of `make demo`) never see half a world: the first rename wins.
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    try:
        make_synthetic(data_cfg.dataset, partial, identities=world.identities,
                       images=world.images, size=parse_size(world.size), cameras=world.cameras,
                       seed=world.seed, style=world.style, progress=True)
        os.rename(partial, root)
    except SyntheticWorldError as e:
        raise DatasetError(f"data.synthetic: {e}") from None
    except OSError:
        if not root.is_dir():          # not another process's finished world: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _check_style(root: Path, world) -> None:
    """The config's world style is a preset, and a synthetic world already at ``root`` was
    drawn in it."""
    if world is None:
        return
    try:
        style_named(world.style)
    except SyntheticWorldError as e:
        raise DatasetError(f"data.synthetic: {e}") from None
    made = marked_style(root)
    if made is not None and made != world.style:
        raise DatasetError(f"{root} holds a synthetic world of style {made!r} but "
                           f"data.synthetic.style is {world.style!r}; remove that folder or "
                           "point data.root elsewhere")
