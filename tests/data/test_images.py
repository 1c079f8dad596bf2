"""Image decoding (data/images.py): every mode to RGB, decompression bombs refused."""

from __future__ import annotations

import io
from contextlib import nullcontext

import numpy as np
import pytest
from PIL import Image

from tlresearch.data.images import check_image, load_rgb, to_rgb


def roundtrip(image: Image.Image, fmt: str, **params) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    buffer.seek(0)
    opened = Image.open(buffer)
    opened.load()
    return opened


def test_to_rgb_rescales_16_bit_greyscale_instead_of_clipping():
    array = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    image = roundtrip(Image.fromarray(array), "PNG")
    assert image.mode.startswith("I")
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (4, 4, 3) and abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_to_rgb_composites_transparency_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    palette = roundtrip(Image.new("RGBA", (4, 4), (0, 0, 0, 0)).convert("P"), "PNG", transparency=0)
    assert np.asarray(to_rgb(palette)).shape == (4, 4, 3)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "LA", "F", "YCbCr", "P"])
def test_to_rgb_handles_every_mode(mode):
    image = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (5, 3)


@pytest.mark.parametrize("limit", [1000, 3000])  # 4096 px: over twice the limit (PIL refuses) / over it (PIL only warns)
def test_load_rgb_refuses_decompression_bombs(tmp_path, monkeypatch, limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.warns(Image.DecompressionBombWarning) if limit == 3000 else nullcontext():
        with pytest.raises(Image.DecompressionBombError):
            load_rgb(path)
        assert check_image(path).startswith("undecodable: DecompressionBombError")
