"""The one image loader: every kind of bad or unusual file gets a reason, every usable one becomes 8-bit RGB."""

import io

import numpy as np
import pytest
from PIL import Image

from sameid.errors import ImageError
from sameid.images import (
    EMPTY,
    MISSING,
    OUTSIDE_ROOT,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    hamming_distance,
    is_monochrome,
    load_image,
    perceptual_hash,
    resolve_inside,
)


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _photo(size=(64, 48)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_missing_empty_corrupt_and_truncated_files_have_their_own_reasons(tmp_path):
    with pytest.raises(ImageError) as missing:
        load_image(tmp_path / "nope.png")
    assert missing.value.reason == MISSING

    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageError) as empty:
        load_image(tmp_path / "zero.jpg")
    assert empty.value.reason == EMPTY

    (tmp_path / "garbage.jpg").write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(ImageError) as corrupt:
        load_image(tmp_path / "garbage.jpg")
    assert corrupt.value.reason == UNREADABLE

    buffer = io.BytesIO()
    _photo((256, 256)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError) as truncated:
        load_image(tmp_path / "cut.png")
    assert truncated.value.reason == TRUNCATED

    buffer = io.BytesIO()
    _photo((256, 256)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError) as truncated_jpeg:
        load_image(tmp_path / "cut.jpg")
    assert truncated_jpeg.value.reason in (TRUNCATED, UNREADABLE)


def test_over_large_image_is_refused_before_decoding(tmp_path):
    path = _save(Image.new("L", (400, 300)), tmp_path / "big.png")
    with pytest.raises(ImageError) as error:
        load_image(path, max_pixels=100_000)
    assert error.value.reason == TOO_LARGE
    image, info = load_image(path, max_pixels=120_000)
    assert image.size == (400, 300) and info.mode == "L"


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "I;16", "I", "1"])
def test_every_mode_becomes_8bit_rgb(tmp_path, mode):
    base = _photo()
    if mode == "I;16":
        array = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        source = Image.fromarray(array)  # uint16 -> mode I;16
    elif mode == "I":
        source = Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 1000, "I")
    else:
        source = base.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I") else "x.png")
    source.save(path)
    image, info = load_image(path)
    assert image.mode == "RGB" and image.size == base.size
    assert info.mode.startswith(mode.split(";")[0])
    if mode in ("I;16", "I"):
        # the full 16-bit range maps onto 0..255, not a black or saturated image
        values = np.asarray(image)
        assert values.min() == 0 and values.max() == 255


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    image, _ = load_image(_save(rgba, tmp_path / "t.png"))
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (0, 0, 255)


def test_resolve_inside_refuses_traversal_and_absolute_paths(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    assert resolve_inside(root, "a/b.png") == (root / "a/b.png").resolve()
    for bad in ("../secret.png", "a/../../secret.png", "/etc/passwd"):
        with pytest.raises(ImageError) as error:
            resolve_inside(root, bad)
        assert error.value.reason == OUTSIDE_ROOT
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ImageError):
        resolve_inside(root, "link.png")


def test_perceptual_hash_is_stable_under_reencoding_and_differs_across_images(tmp_path):
    rng = np.random.default_rng(3)
    smooth = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((128, 128), Image.BICUBIC)
    other = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((128, 128), Image.BICUBIC)
    path = _save(smooth, tmp_path / "s.jpg", quality=70)
    reloaded, _ = load_image(path)
    assert hamming_distance(perceptual_hash(smooth), perceptual_hash(reloaded)) <= 4
    assert hamming_distance(perceptual_hash(smooth), perceptual_hash(other)) > 12


def test_monochrome_detection():
    assert is_monochrome(_photo().convert("L").convert("RGB"))
    assert not is_monochrome(_photo())
