"""Decoding ordinary image files: bit depths, modes, orientation, and every way a file can be broken."""

import io

import numpy as np
import pytest
from PIL import Image

from medprobe.core.errors import ImageError
from medprobe.data.images import read_image
from medprobe.data.pixels import stretch_to_8bit

RAMP16 = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0..4092: 12-bit data in a 16-bit file


def saved(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


def pixels_of(path):
    return np.asarray(read_image(path).image)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_stretched_to_the_full_range_not_clipped(tmp_path, suffix):
    pixels = pixels_of(saved(tmp_path / f"ramp{suffix}", Image.fromarray(RAMP16)))
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
    np.testing.assert_array_equal(pixels, stretch_to_8bit(RAMP16))
    assert len(np.unique(pixels)) == 256  # clipping at 255 would leave a mostly white image with few levels


def test_float_tiff_with_nan_is_stretched_over_its_finite_values(tmp_path):
    values = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    values[0, 0] = np.nan
    pixels = pixels_of(saved(tmp_path / "float.tif", Image.fromarray(values)))
    assert pixels.min() == 0 and pixels.max() == 255


def test_rgba_and_la_are_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere ...
    rgba[:2, :, 3] = 255  # ... opaque in the top half, transparent below
    pixels = pixels_of(saved(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")))
    assert read_image(tmp_path / "rgba.png").image.mode == "RGB"
    assert (pixels[:2, :, 0] == 200).all() and (pixels[2:] == 0).all()
    la = np.stack([np.full((4, 4), 180, np.uint8), np.full((4, 4), 255, np.uint8)], axis=-1)
    la[2:, :, 1] = 0
    decoded = read_image(saved(tmp_path / "la.png", Image.fromarray(la, "LA"))).image
    assert decoded.mode == "L" and (np.asarray(decoded)[:2] == 180).all() and (np.asarray(decoded)[2:] == 0).all()


def test_palette_cmyk_and_bilevel_become_rgb_or_l(tmp_path):
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 1), 1)
    assert tuple(pixels_of(saved(tmp_path / "p.png", palette))[1, 1]) == (10, 200, 30)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert tuple(pixels_of(saved(tmp_path / "c.jpg", cmyk, quality=100))[0, 0])[0] > 200
    assert read_image(saved(tmp_path / "b.png", Image.new("1", (4, 4), 1))).image.mode == "L"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 20, 20))  # black left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = read_image(saved(tmp_path / "phone.jpg", image, exif=exif, quality=95)).image
    assert decoded.size == (20, 40)
    pixels = np.asarray(decoded.convert("L"))
    assert pixels[:15].mean() < 40 and pixels[-15:].mean() > 215  # the black half is now on top


def test_multi_frame_tiff_uses_the_first_frame_and_records_it(tmp_path):
    frames = [Image.new("L", (8, 8), v) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    decoded = read_image(tmp_path / "stack.tif")
    assert np.asarray(decoded.image).max() == 10 and decoded.notes == ["3 frames; used the first"]


def test_a_file_whose_extension_lies_is_decoded_by_content_and_noted(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "really_a_jpeg.png", format="JPEG")
    decoded = read_image(tmp_path / "really_a_jpeg.png")
    assert decoded.image.mode == "RGB"
    assert decoded.notes == ["extension .png but the content is JPEG; decoded as JPEG"]


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    saved(tmp_path / "big.png", Image.new("L", (200, 100)))
    monkeypatch.setenv("MEDPROBE_MAX_PIXELS", "10000")
    with pytest.raises(ImageError, match=r"200 x 100 = 20,000 pixels, over the decompression-bomb limit of 10,000"):
        read_image(tmp_path / "big.png")


def test_a_real_bomb_header_is_refused_with_default_limits(tmp_path):
    # A PNG header claiming 40000 x 40000 pixels: Pillow's own guard or ours must stop it.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="over the decompression-bomb limit of 89,478,485; if it is genuine, raise the limit with MEDPROBE_MAX_PIXELS"):
        read_image(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is a text file, not a picture"), "not a recognised image format"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: None, "file not found"),
    ],
    ids=["zero-byte", "not-an-image", "folder", "missing"],
)
def test_unreadable_files_raise_image_error_with_the_reason(tmp_path, make, reason):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageError, match=reason) as caught:
        read_image(path)
    assert caught.value.path == str(path) and reason in caught.value.reason


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("WEBP", ".webp")])
def test_truncated_files_raise_image_error(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format=fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated|corrupt|not a recognised"):
        read_image(path)
    with pytest.raises(ImageError):
        read_image(path, fast=True)


def test_fast_decoding_still_catches_a_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:-200])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.jpg", fast=True)
