"""Image sources: where pixels come from (an npz array or files) and how one image is decoded."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medprobe.errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}


def decode_image(path):
    """Open one image file fully (so truncation is caught here), or raise ImageError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as e:
        raise ImageError(path, "file not found") from e
    except UnidentifiedImageError as e:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(path, f"corrupt or truncated image ({e})") from e


class ArrayImages:
    """Images held in uint8 arrays (N, H, W) or (N, H, W, C), as MedMNIST ships them.

    Takes several arrays (one per split) and indexes them as one, without concatenating,
    so a memory-mapped 224 px file is never copied whole.
    """

    def __init__(self, arrays):
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self):
        return int(self.offsets[-1])

    def _get(self, index):
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return np.asarray(self.arrays[part][index - self.offsets[part]])

    def load(self, index):
        return Image.fromarray(self._get(index))

    def content(self, index):
        image = np.ascontiguousarray(self._get(index))
        return f"{image.shape}{image.dtype}".encode() + image.tobytes()

    def describe(self, index):
        return f"image #{index}"


class FileImages:
    """Images stored as files; `content` is the raw file bytes, so a changed file changes the cache key."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        return decode_image(self.paths[index])

    def content(self, index):
        try:
            return self.paths[index].read_bytes()
        except OSError as e:
            raise ImageError(self.paths[index], f"cannot read file ({e.strerror})") from e

    def describe(self, index):
        return str(self.paths[index])
