"""Pixel-level rules shared by every decoder: the decompression-bomb limit and the stretch to 8 bits."""

import os

import numpy as np

from medprobe.core.errors import ImageError

# Pillow's own warning threshold; above it a file is refused as a likely decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485

def max_pixels():
    """The decompression-bomb limit: $MEDPROBE_MAX_PIXELS, else Pillow's warning threshold (~89.5 MP)."""
    return int(os.environ.get("MEDPROBE_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def check_pixels(path, width, height):
    limit = max_pixels()
    if width * height > limit:
        raise ImageError(
            path,
            f"image is {width} x {height} = {width * height:,} pixels, over the decompression-bomb limit of "
            f"{limit:,}; if it is genuine, raise the limit with MEDPROBE_MAX_PIXELS",
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
