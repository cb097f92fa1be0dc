"""World styles: the default style is the look every earlier world had, byte for byte; every
preset makes worlds the readers read; the presets move what they say they move; an unknown
style, or a world of another style at a config's root, is refused."""
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.config.data import DataConfig, SyntheticWorldConfig
from pipeline.data import ensure_dataset, read_dataset
from pipeline.data.records import DatasetError
from pipeline.data.synthetic import (MARKER, STYLES, SyntheticWorldError, generate,
                                     make_synthetic)
from pipeline.data.synthetic.video import make_synthetic_video
from test_synthetic import TINY, assert_same_records

CUHK_IMAGES = 104   # a test pool of 52: enough for TestG50
# sha256 of the tiny worlds' JPEGs (TINY, seed 0), made on main before styles existed: the first
# image's bytes, and every image's name + bytes in name order.
BEFORE_STYLES = {
    "prw": ("c1s1_000001.jpg",
            "e31208ccaabb13e3efc8bcee3fff75fcb294c77e97c0331555d0efb685468eb3",
            "c4dc4ce5ba0b1d4e36c645b2a77a16c0e30e61c7d54cf63e2abed611cd5588b6"),
    "cuhk-sysu": ("s1.jpg",
                  "4e0e9cfd6a0ae1f47b00b6247831fa6aae502bcb715b0cb2d9341174d7488a00",
                  "fc0753eb065382851a8426a8cf1193aedba392c9635e2659c8c1622485f5c129"),
}
MEASURED = dict(identities=12, images=40, size=(160, 120), seed=0)


def tiny_args(fmt: str) -> dict:
    return {**TINY, "cameras": None, **({"images": CUHK_IMAGES} if fmt == "cuhk-sysu" else {})}


@pytest.mark.parametrize("fmt", ["prw", "cuhk-sysu"])
def test_the_default_style_draws_todays_worlds(fmt, tmp_path):
    root = make_synthetic(fmt, tmp_path / fmt, seed=0, style="default", **tiny_args(fmt))
    images = sorted(root.rglob("*.jpg"))
    every = hashlib.sha256()
    for path in images:
        every.update(path.name.encode())
        every.update(path.read_bytes())
    first, first_hash, all_hash = BEFORE_STYLES[fmt]
    assert images[0].name == first
    assert hashlib.sha256(images[0].read_bytes()).hexdigest() == first_hash
    assert every.hexdigest() == all_hash
    assert json.loads((root / MARKER).read_text())["style"] == "default"


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_makes_worlds_the_readers_read(style, tmp_path):
    for fmt in ("prw", "cuhk-sysu"):
        intended = generate(fmt, tmp_path / fmt, seed=1, style=style, **tiny_args(fmt))
        data = read_dataset(fmt, intended.root)
        assert_same_records(data.train, intended.train)
        assert_same_records(data.gallery, intended.gallery)
        assert [(q.image, q.pid) for q in data.queries] == \
            [(q.image, q.pid) for q in intended.queries]
        assert sorted(data.query_galleries) == sorted(intended.query_galleries)
        marker = json.loads((intended.root / MARKER).read_text())
        assert marker["style"] == style and marker["cameras"] == STYLES[style].cameras
    data = read_dataset("prw", tmp_path / "prw")
    prw = data.train + data.gallery
    assert {r.camera for r in prw} == set(range(1, STYLES[style].cameras + 1))
    for r in prw:
        assert len(r.boxes) >= 1 and (r.boxes >= 0).all() and (r.boxes[:, 2] <= r.width).all()
        assert (r.boxes[:, 3] <= r.height).all() and (r.boxes[:, 2:] > r.boxes[:, :2]).all()


def measure(root) -> dict:
    """What a style claims to move, measured on a PRW-format world."""
    data = read_dataset("prw", root)
    records = data.train + data.gallery
    boxes = np.concatenate([r.boxes for r in records])
    heights = (boxes[:, 3] - boxes[:, 1]) / records[0].height
    aspect = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    whole = (boxes[:, 1] > 0) & (boxes[:, 3] < records[0].height) & (boxes[:, 0] > 0) \
        & (boxes[:, 2] < records[0].width)
    pixels = np.stack([np.asarray(Image.open(r.path), np.float32) for r in records])
    grey = pixels.mean(axis=3)
    return {"people": len(boxes) / len(records), "height": float(np.median(heights)),
            "aspect_spread": float(np.ptp(aspect[whole])),
            "brightness": float(pixels.mean()),
            "colourfulness": float(np.abs(pixels - grey[..., None]).mean()),
            "warmth": float((pixels[..., 0] - pixels[..., 2]).mean()),
            "sharpness": float(np.abs(np.diff(grey, axis=2)).mean())}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    base = tmp_path_factory.mktemp("styles")
    return {s: measure(make_synthetic("prw", base / s, style=s, **MEASURED)) for s in STYLES}


def test_styles_move_what_they_claim(measured):
    default, crowded = measured["default"], measured["crowded-street"]
    mall, night, sunny = measured["indoor-mall"], measured["night-cctv"], measured["sunny-campus"]
    assert crowded["people"] > 1.4 * default["people"]
    assert crowded["height"] < 0.7 * default["height"]
    assert mall["height"] > default["height"] and mall["people"] < default["people"]
    assert mall["warmth"] > default["warmth"] + 10
    assert mall["sharpness"] < 0.8 * default["sharpness"]
    assert night["brightness"] < 0.6 * default["brightness"]
    assert night["colourfulness"] < 0.5 * default["colourfulness"]
    assert sunny["brightness"] > default["brightness"]
    assert sunny["colourfulness"] > 1.2 * default["colourfulness"]
    assert sunny["aspect_spread"] > default["aspect_spread"]


def test_styled_footage_records_its_style(tmp_path):
    root = make_synthetic_video(tmp_path / "night", identities=12, images=40, size=(96, 72),
                                seconds=1.0, fps=2, walkers=2, passers=0, style="night-cctv")
    params = json.loads((root / MARKER).read_text())
    assert params["style"] == "night-cctv" and params["cameras"] == STYLES["night-cctv"].cameras
    assert len(list(root.glob("cam*.mp4"))) == STYLES["night-cctv"].cameras


def test_unknown_styles_and_other_styles_worlds_are_refused(tmp_path):
    listing = ", ".join(STYLES)
    with pytest.raises(SyntheticWorldError, match=f"unknown world style 'noir'.*{listing}"):
        generate("prw", tmp_path / "noir", style="noir", **TINY)
    from cli import cli
    bad = CliRunner().invoke(cli, ["make-synthetic", "--format", "prw", "--out",
                                   str(tmp_path / "cli"), "--style", "noir"])
    assert bad.exit_code == 2 and listing in bad.output and not (tmp_path / "cli").exists()
    night = make_synthetic("prw", tmp_path / "night", style="night-cctv", **TINY)
    world = SyntheticWorldConfig(identities=TINY["identities"], images=TINY["images"],
                                 size="96x72", style="default")
    with pytest.raises(DatasetError, match="style 'night-cctv'.*data.synthetic.style"):
        ensure_dataset(DataConfig(root=str(night), synthetic=world), say=lambda text: None)
    ensure_dataset(DataConfig(root=str(night), synthetic=SyntheticWorldConfig(
        style="night-cctv")), say=lambda text: None)     # its own style: used as it is
    with pytest.raises(DatasetError, match="data.synthetic: unknown world style"):
        ensure_dataset(DataConfig(root=str(tmp_path / "new"), synthetic=SyntheticWorldConfig(
            style="noir")), say=lambda text: None)
