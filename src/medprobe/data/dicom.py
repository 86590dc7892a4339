"""DICOM -> the 8-bit image a viewer would show: stored values, modality LUT, VOI LUT or window, presentation.

Needs pydicom (`pip install 'medprobe[dicom]'`, which also brings the pylibjpeg decoders for
JPEG, JPEG-LS and JPEG 2000 transfer syntaxes).
"""

import logging
from contextlib import contextmanager

import numpy as np

from medprobe.core.caught import caught_warnings
from medprobe.core.errors import ImageError
from medprobe.data.pixels import check_pixels, stretch_to_8bit

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# pydicom converts the YBR family to RGB while decoding; these are all it and we map to display pixels.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
SUPPORTED = MONOCHROME + COLOUR + ("PALETTE COLOR",)
DECODERS_HINT = "pip install 'medprobe[dicom]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"


# pydicom reports through its logger (with tracebacks) and through warnings; both are captured per file and
# become that file's notes. Capturing changes process-wide logging and warning state: caught_warnings holds the lock
# that makes it one file (and one thread) at a time.


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def _pydicom_messages(notes):
    """Route pydicom's log records and warnings into `notes` (first line of each, deduplicated) instead of the terminal."""
    logger = logging.getLogger("pydicom")
    collect = _Collect()
    with caught_warnings("always", record=True) as caught:
        handlers, propagate = logger.handlers[:], logger.propagate
        logger.handlers, logger.propagate = [collect], False
        try:
            yield
        finally:
            logger.handlers, logger.propagate = handlers, propagate
            for text in collect.messages + [str(w.message) for w in caught]:
                line = f"pydicom: {text.strip().splitlines()[0] if text.strip() else text}"
                if line not in notes:
                    notes.append(line)


def read_dicom(path, source=None):
    """(uint8 (H, W) or (H, W, 3) array, notes) for the first frame of one DICOM file; or ImageError.

    What pydicom logs or warns about the file is returned as notes (and, for a file that fails, is
    left out: the ImageError says what went wrong), never printed.

    >>> pixels, notes = read_dicom("chest.dcm")
    >>> pixels.dtype, notes
    (dtype('uint8'), [])

    `source`, a file object of the file's bytes already read, is decoded instead of opening `path` again.
    """
    notes = []
    with _pydicom_messages(notes):
        pixels, own = _read_dicom(path, source)
    return pixels, own + notes


def _read_dicom(path, source=None):
    try:
        import pydicom
        from pydicom.pixels import pixel_array
    except ImportError as e:
        raise ImageError(path, f"is a DICOM file, and reading DICOM needs pydicom: {DECODERS_HINT}") from e
    try:
        ds = pydicom.dcmread(path if source is None else source, force=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise ImageError(path, f"not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality") or "object"
        raise ImageError(path, f"DICOM file has no pixel data (it is a {kind}, not an image)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED:
        raise ImageError(
            path, f"DICOM PhotometricInterpretation {photometric or '(missing)'!r} is not supported; supported: {', '.join(SUPPORTED)}"
        )
    check_pixels(path, int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
    _require_decoder(path, ds)
    notes = []
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames); used frame 1")
    stored = pixel_array(ds, index=0)  # decodes one frame only; BitsStored masking and sign are applied here
    if photometric in MONOCHROME:
        pixels = _monochrome(stored, ds)
        if photometric == "MONOCHROME1":  # 0 is white: invert so bone is bright as in MONOCHROME2
            pixels = 255 - pixels
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(stored, ds)
        pixels = stretch_to_8bit(rgb, 0, np.iinfo(rgb.dtype).max if rgb.dtype.kind == "u" else 255)
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
        pixels = stretch_to_8bit(stored, 0, 2**bits - 1)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3):
        raise ImageError(path, f"DICOM frame has shape {pixels.shape}; expected rows x columns (x 3)")
    return np.ascontiguousarray(pixels), notes


def _require_decoder(path, ds):
    """Name the transfer syntax when no installed package can decode it, before trying."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if not syntax.is_compressed:
        return
    name = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise ImageError(
            path, f"DICOM transfer syntax {name} cannot be decoded by pydicom with any plugin; "
            "convert the file to an uncompressed syntax (e.g. `gdcmconv --raw` or dcmtk `dcmdjpeg`)"
        ) from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageError(path, f"DICOM pixel data is compressed with {name} and no installed package decodes it ({missing}); {DECODERS_HINT}")


def _monochrome(stored, ds):
    """Modality LUT (slope/intercept), then the VOI LUT or window mapped to 0..255; no VOI: the image's own range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(stored, ds)
    shown = apply_voi_lut(values, ds, index=0)
    if shown is values:
        return stretch_to_8bit(values)
    low, high = _voi_output_range(ds)
    return stretch_to_8bit(shown, low, high)


def _voi_output_range(ds):
    """The black..white range of the VOI step: what it maps its lowest and highest inputs (or every LUT entry) to."""
    from pydicom.pixels import apply_voi_lut

    sequence = ds.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") and sequence[0].get("LUTData") is not None:
        entries, first = int(sequence[0].LUTDescriptor[0]) or 65536, int(sequence[0].LUTDescriptor[1])
        probe = np.arange(first, first + entries, dtype=np.int64)
    else:
        probe = np.array([-1e300, 1e300])
    with np.errstate(over="ignore", invalid="ignore"):
        out = apply_voi_lut(probe, ds, index=0)
    return float(np.nanmin(out)), float(np.nanmax(out))
