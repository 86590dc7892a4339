"""Image sources: where a dataset's images come from. Both kinds implement `ImageSource`."""

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from medprobe.core import remote
from medprobe.core.errors import ImageError
from medprobe.data.images import decode_image


@runtime_checkable
class ImageSource(Protocol):
    """N images addressed by row: what datasets, the pre-scan, embedding and the Ray path rely on."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """The decoded image of one row (mode L or RGB for files; as stored for arrays)."""

    def content(self, index: int) -> bytes:
        """The bytes that identify the image; their SHA-256 keys the embedding cache."""

    def load_content(self, index: int, content: bytes) -> Image.Image:
        """The image `load(index)` gives, decoded from `content(index)`'s bytes: a Ray worker reads each file once."""

    def describe(self, index: int) -> str:
        """How to name the row to a person: a path, or 'image #i'."""

    def subset(self, rows) -> "ImageSource":
        """The same source restricted to `rows`, in that order."""


class ArrayImages:
    """Images held in uint8 arrays (N, H, W) or (N, H, W, C), as MedMNIST ships them.

    Takes several arrays (one per split) and indexes them as one, without concatenating,
    so a memory-mapped 224 px file is never copied whole. A subset keeps the arrays and a row map.
    """

    def __init__(self, arrays, rows=None):
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.rows = np.arange(self.offsets[-1]) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def _get(self, index):
        row = int(self.rows[index])
        part = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return np.asarray(self.arrays[part][row - self.offsets[part]])

    def load(self, index):
        return Image.fromarray(self._get(index))

    def content(self, index):
        image = np.ascontiguousarray(self._get(index))
        return f"{image.shape}{image.dtype}".encode() + image.tobytes()

    def load_content(self, index, content):
        return self.load(index)  # the array is in memory already; its content is not a file to decode

    def describe(self, index):
        return f"image #{int(self.rows[index])}"

    def subset(self, rows):
        return ArrayImages(self.arrays, self.rows[np.asarray(rows, dtype=np.int64)])


# Decoded pixels the pre-scan may keep for embedding: ~3,900 HAM10000 images (150 px RGB), or 64 2048 px X-rays.
# Within it a file is decoded once; beyond it the scan decodes JPEGs at reduced scale and embedding decodes again.
# Images whose embedding is already stored are never asked for, so a cache-hit run holds them until the data set
# is dropped: the budget bounds that too.
KEEP_BYTES = 256 * 2**20


class KeptImages:
    """Images decoded by the pre-scan, held until embedding asks for each once, within a byte budget (thread-safe).

    Pickles as an empty cache, so a Ray task never carries the pixels.
    """

    def __init__(self, budget=KEEP_BYTES):
        self.budget = budget
        self.used = 0
        self._images = {}  # str(path) -> (image, bytes reserved)
        self._lock = threading.Lock()

    def __reduce__(self):
        return KeptImages, (self.budget,)

    def __len__(self):
        return len(self._images)

    def reserve(self, nbytes):
        """Count `nbytes` against the budget and return True, or return False when they do not fit."""
        with self._lock:
            if self.used + nbytes > self.budget:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes):
        with self._lock:
            self.used -= nbytes

    def put(self, path, image, nbytes):
        with self._lock:
            self._images[str(path)] = (image, nbytes)

    def pop(self, path):
        """The kept image of `path` (forgotten now: each file is embedded once), or None."""
        with self._lock:
            image, nbytes = self._images.pop(str(path), (None, 0))
            self.used -= nbytes
        return image


class FileImages:
    """Images stored as files; `content` is the raw file bytes, so a changed file changes the cache key.

    `kept` holds what the pre-scan decoded (shared by every subset), so `load` decodes only what it lacks.
    """

    def __init__(self, paths, kept=None):
        self.paths = [p if remote.is_url(p) else Path(p) for p in paths]  # a URL (s3://...) stays a string
        self.kept = kept if kept is not None else KeptImages()

    def __len__(self):
        return len(self.paths)

    def load(self, index):
        image = self.kept.pop(self.paths[index])
        if image is None and remote.is_url(self.paths[index]):
            return self.load_content(index, self.content(index))
        return image if image is not None else decode_image(self.paths[index])

    def content(self, index):
        path = self.paths[index]
        if remote.is_url(path):
            return remote.read_image_bytes(path)
        try:
            return path.read_bytes()
        except OSError as e:
            raise ImageError(path, f"cannot read file ({e.strerror})") from e

    def load_content(self, index, content):
        return decode_image(self.paths[index], data=content)

    def describe(self, index):
        return str(self.paths[index])

    def subset(self, rows):
        return FileImages([self.paths[i] for i in rows], self.kept)


def content_digests(images, workers=4):
    """SHA-256 of every image's content, in order (hashing releases the GIL, so threads help)."""

    def digest(index):
        return hashlib.sha256(images.content(index)).hexdigest()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(digest, range(len(images))))
