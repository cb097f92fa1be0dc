"""One reader for every picture (frames, queries, uploads, result pictures): the EXIF
orientation applied and every PIL mode mapped to 8-bit RGB, pixel for pixel."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.image_files import image_size, load_rgb, read_rgb
from pipeline.data.records import DatasetError

# a 3x2 picture whose every pixel differs, so any turn or flip shows
STORED = np.arange(3 * 2 * 3, dtype=np.uint8).reshape(2, 3, 3) * 12
SHOWN = {  # EXIF orientation -> what a viewer shows of STORED
    1: STORED, 2: STORED[:, ::-1], 3: STORED[::-1, ::-1], 4: STORED[::-1],
    5: STORED.transpose(1, 0, 2), 6: np.rot90(STORED, -1), 7: STORED[::-1, ::-1].transpose(1, 0, 2),
    8: np.rot90(STORED, 1),
}


def saved(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return path


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_exif_orientation_is_applied_to_pixels_and_size(tmp_path, orientation):
    image = Image.fromarray(STORED)
    path = saved(image, tmp_path / "x.png", exif=with_orientation(image, orientation))
    shown = SHOWN[orientation]
    np.testing.assert_array_equal(load_rgb(path), shown)
    assert image_size(path) == (shown.shape[1], shown.shape[0])


def test_a_phone_jpeg_stored_sideways_reads_upright(tmp_path):
    """Orientation 6 (turn 90 degrees clockwise to view): the stored left half, red, is shown
    on top, and the header walk reports the shown size (24x32 for 32x24 stored)."""
    stored = np.zeros((24, 32, 3), np.uint8)
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    image = Image.fromarray(stored)
    path = saved(image, tmp_path / "phone.jpg", quality=95,
                 exif=with_orientation(image, 6))
    rgb = load_rgb(path).astype(int)
    assert rgb.shape == (32, 24, 3) and image_size(path) == (24, 32)
    np.testing.assert_allclose(rgb[:12].mean((0, 1)), (255, 0, 0), atol=12)
    np.testing.assert_allclose(rgb[20:].mean((0, 1)), (0, 0, 255), atol=12)


def grey16():
    return Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))


MODES = {  # name -> (picture, the RGB rows it must read as)
    "1": (Image.fromarray(np.array([[0, 1]], bool)), [[[0] * 3, [255] * 3]]),
    "L": (Image.fromarray(np.array([[0, 77]], np.uint8)), [[[0] * 3, [77] * 3]]),
    "I;16 (16-bit PNG)": (grey16(), [[[0] * 3, [100] * 3, [255] * 3]]),
    "I, 16-bit range": (Image.fromarray(np.array([[0, 257 * 100, 65535]], np.int32)),
                        [[[0] * 3, [100] * 3, [255] * 3]]),
    "I, 8-bit range": (Image.fromarray(np.array([[0, 77, 255]], np.int32)),
                       [[[0] * 3, [77] * 3, [255] * 3]]),
    "F, 0..1": (Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)),
                [[[0] * 3, [128] * 3, [255] * 3]]),
    "RGBA on white": (Image.fromarray(np.array([[[255, 0, 0, 128], [0, 0, 255, 0],
                                                 [0, 255, 0, 255]]], np.uint8)),
                      [[[255, 127, 127], [255, 255, 255], [0, 255, 0]]]),
    "LA on white": (Image.fromarray(np.array([[[0, 0], [100, 255], [0, 128]]], np.uint8), "LA"),
                    [[[255] * 3, [100] * 3, [127] * 3]]),
    "CMYK": (Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]],
                                      np.uint8), "CMYK"),
             [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]),
}


def palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata([0, 1])
    if transparent:
        image.info["transparency"] = 0
    return image


MODES["P"] = (palette(False), [[[10, 20, 30], [200, 100, 50]]])
MODES["P, transparent colour on white"] = (palette(True), [[[255, 255, 255], [200, 100, 50]]])
MODES["PA on white"] = (palette(False).convert("PA"), [[[10, 20, 30], [200, 100, 50]]])


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_reads_as_8bit_rgb(tmp_path, name):
    image, expected = MODES[name]
    rgb = read_rgb(_as_file(image, tmp_path), name)
    assert rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb.astype(int), np.array(expected), atol=1)


def _as_file(image: Image.Image, tmp_path):
    """The picture as the bytes of a file of a format that keeps its mode."""
    fmt = "TIFF" if image.mode in ("CMYK", "I", "F", "PA") else "PNG"
    out = io.BytesIO()
    image.save(out, format=fmt)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).mode == image.mode, "the file changed the mode"
    return data


def test_a_16bit_png_is_not_a_white_frame(tmp_path):
    ramp = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21))
    path = saved(ramp, tmp_path / "depth.png")
    assert Image.open(path).mode == "I;16"
    rgb = load_rgb(path)
    assert rgb.min() == 0 and rgb.max() == round(3071 * 21 * 255 / 65535)   # scaled, not clipped
    assert 120 < rgb.mean() < 130


def png(width=40, height=30) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
                    ).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("data, words", [
    (b"not a picture", "not a picture"),
    (png()[:200], "does not decode"),       # cut off: the header reads, the pixels do not
])
def test_unreadable_bytes_are_refused_with_their_name(data, words):
    with pytest.raises(DatasetError, match=f"upload.png: .*{words}"):
        read_rgb(data, "upload.png")


def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(DatasetError, match="40x30 is too large"):
        read_rgb(png()[:200], "big.png", max_pixels=1000)   # refused from the header alone
