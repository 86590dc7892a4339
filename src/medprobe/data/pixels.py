"""Pixel-level rules shared by every decoder: the decompression-bomb limit and the stretch to 8 bits."""

import os

import numpy as np

from medprobe.core.errors import DatasetError, ImageError

# Pillow's own warning threshold; above it a file is refused as a likely decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485
# Resizing the shorter side to the encoder's input makes a 100000 x 2 image (672 bytes as a PNG) a
# 11 million x 224 intermediate (~7.5 GB); no medical image is that elongated.
MAX_ASPECT = 50


def max_pixels():
    """The decompression-bomb limit: $MEDPROBE_MAX_PIXELS, else Pillow's warning threshold (~89.5 MP)."""
    value = os.environ.get("MEDPROBE_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        # A DatasetError, not an ImageError: one bad setting must not be reported as every image being corrupt.
        raise DatasetError(f"MEDPROBE_MAX_PIXELS must be a whole number of pixels, e.g. 200000000; got {value!r}")
    return limit


def check_pixels(path, width, height):
    limit = max_pixels()
    if width * height > limit:
        raise ImageError(
            path,
            f"image is {width} x {height} = {width * height:,} pixels, over the decompression-bomb limit of "
            f"{limit:,}; if it is genuine, raise the limit with MEDPROBE_MAX_PIXELS",
        )
    if min(width, height) == 0 or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            path,
            f"image is {width} x {height} pixels (aspect ratio over {MAX_ASPECT}:1); resizing its shorter side to the "
            "encoder's input would need gigabytes; crop it to the region of interest first",
        )


def stretch_to_8bit(values, low=None, high=None):
    """Map [low, high] (default: the finite min..max) linearly onto 0..255; a flat image becomes 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low = float(values[finite].min()) if low is None else float(low)
    high = float(values[finite].max()) if high is None else float(high)
    values = np.where(finite, values, low)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
