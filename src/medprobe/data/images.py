"""How one file becomes an 8-bit L or RGB image.

Files are decoded by their content, not their extension: PNG, JPEG, TIFF, BMP, GIF, WebP and
DICOM (see `medprobe.data.dicom`). Anything that cannot be decoded raises `ImageError(path, reason)`.
"""

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medprobe.core import remote
from medprobe.core.caught import caught_warnings
from medprobe.core.errors import ImageError, MedprobeError
from medprobe.data.dicom import read_dicom
from medprobe.data.pixels import check_pixels, stretch_to_8bit

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
# The format each suffix promises; when the content disagrees, the content wins and the mismatch is noted.
_SUFFIX_FORMAT = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
    ".gif": "GIF", ".webp": "WEBP", ".dcm": "DICOM", ".dicom": "DICOM",
}
# How pixels become the 8-bit image the transform sees. Part of the cache key and of saved models:
# change it and every cached embedding is recomputed.
DECODING = {
    "version": 1,
    "16-bit, 32-bit and float grayscale": "stretched linearly from the image's min..max to 0..255 (not clipped)",
    "alpha (RGBA, LA, palette with transparency)": "composited over black",
    "palette, CMYK, YCbCr, LAB": "converted to RGB",
    "exif_orientation": "applied",
    "multi_frame": "first frame",
    "dicom": "modality LUT (rescale), then VOI LUT or window (else the image's min..max) to 0..255; MONOCHROME1 inverted",
}


def is_image_file(path):
    """True for files a folder dataset should include: known suffixes, or no suffix but DICOM content."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    return not suffix and _head(path)[128:132] == b"DICM"


def _head(path, n=132):
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


@dataclass
class Decoded:
    image: Image.Image  # mode "L" or "RGB"
    notes: list = field(default_factory=list)  # things worth recording, e.g. "12 frames; used the first"


def read_image(path, fast=False, data=None):
    """Decode one file by its content into an 8-bit L or RGB image, with notes; or raise ImageError.

    `fast` decodes JPEGs at reduced scale (every byte is still read, so truncation is still caught);
    the pre-scan uses it, embedding does not. `data`, the file's bytes when they were read already (a Ray
    worker hashes them first), is decoded instead of reading `path` again; `path` then only names the file.

    >>> read_image("xray.dcm").image.mode
    'L'
    """
    if data is None and remote.is_url(path):  # s3://... : read once here, then decoded like a file's bytes
        data = remote.read_image_bytes(path)
    path = Path(path) if data is None else path
    if data is None:
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise ImageError(path, "file not found") from e
        except OSError as e:
            raise ImageError(path, f"cannot read file ({e.strerror})") from e
        if path.is_dir():
            raise ImageError(path, "is a folder, not an image file")
    else:
        size = len(data)
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    head = _head(path) if data is None else data[:132]
    source = path if data is None else io.BytesIO(data)
    expected = _SUFFIX_FORMAT.get(Path(str(path)).suffix.lower())
    try:
        if head[128:132] == b"DICM":
            decoded, actual = _read_dicom(path, source), "DICOM"
        else:
            decoded, actual = _read_pillow(path, fast, dicom_fallback=expected == "DICOM", source=source)
    except MedprobeError:
        raise
    except Exception as e:  # noqa: BLE001 -- hostile bytes make decoders raise nearly any type; each becomes ImageError
        raise ImageError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    if expected and actual != expected and not (expected == "JPEG" and actual == "MPO"):
        decoded.notes.append(f"extension {Path(str(path)).suffix} but the content is {actual}; decoded as {actual}")
    return decoded


def decoded_bytes(path):
    """Bytes of the 8-bit image `read_image` returns, from the header alone; None when Pillow cannot tell (DICOM, junk)."""
    Image.MAX_IMAGE_PIXELS = None  # as in _read_pillow: our own limit applies, in read_image
    try:
        # Pillow's plugins warn while guessing at a DICOM file or junk; read_image reports what is wrong, per file.
        with caught_warnings("ignore"), Image.open(path) as image:
                width, height = image.size
                gray = image.mode in ("1", "L", "LA", "La", "F") or image.mode.startswith("I")
    except Exception:  # noqa: BLE001 -- read_image reports what is wrong with the file; here it only cannot be kept
        return None
    return width * height * (1 if gray else 3)


def decode_image(path, data=None):
    """The decoded image alone (see `read_image`)."""
    return read_image(path, data=data).image


def _read_dicom(path, source=None):
    pixels, notes = read_dicom(path, None if source is path else source)
    return Decoded(Image.fromarray(pixels), notes)


def _read_pillow(path, fast, dicom_fallback, source=None):
    # Pillow's own bomb check warns (raw, on the terminal) above its limit and refuses at twice it, whatever
    # MEDPROBE_MAX_PIXELS says. `check_pixels` below applies our limit to the header's size before any pixel
    # is decoded, so Pillow's check is switched off rather than duplicated.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(path if source is None else source)
    except Image.UnidentifiedImageError as e:
        if dicom_fallback:  # a DICOM file written without the 128-byte preamble
            if isinstance(source, io.BytesIO):
                source.seek(0)
            return _read_dicom(path, source), "DICOM"
        raise ImageError(
            path, "not a recognised image format (PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM expected)"
        ) from e
    with image:
        actual = image.format
        check_pixels(path, *image.size)
        notes = []
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            notes.append(f"{frames} frames; used the first")
        if fast and image.format == "JPEG":
            image.draft(image.mode, (1, 1))
        image.load()
        image = ImageOps.exif_transpose(image)
        return Decoded(to_8bit(image), notes), actual


def to_8bit(image):
    """Any Pillow mode -> "L" or "RGB", following DECODING."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(stretch_to_8bit(np.asarray(image)))
    if mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette may carry transparency
        mode = "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        flat = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
        return flat.convert("L" if mode.startswith("L") else "RGB")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
