"""The pre-scan: decode every image file once, before any embedding or training.

One unreadable file should neither cost an hour of embedding nor vanish silently. Under
`on_error="fail"` (the default) every bad file is listed with its reason and nothing runs;
under `"skip"` the bad rows are dropped and each is recorded in the results.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from medprobe.core.errors import DatasetError, ImageError
from medprobe.data.images import decoded_bytes, read_image
from medprobe.data.sources import FileImages

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")


@dataclass
class ScanReport:
    on_error: str
    scanned: int
    skipped: list = field(default_factory=list)  # [{"path": ..., "reason": ...}] for each unreadable file
    notes: list = field(default_factory=list)  # [{"path": ..., "note": ...}], e.g. a multi-frame file or a lying extension
    seconds: float = 0.0
    # The Ray job whose workers read the files instead of this process (medprobe.embedding.ray.read_on_cluster): its actors,
    # CPUs, start-up seconds, and the images (x encoders) it embedded in the same pass, whose seconds are these; None here.
    on_ray: dict | None = None

    def describe(self):
        return asdict(self)


def scan_images(dataset, on_error="fail", workers=4, check=True):
    """Decode every file-based image of `dataset` in threads; return (dataset without bad rows, ScanReport).

    Arrays (MedMNIST npz) need no scan. What is decoded is kept for embedding up to a memory budget
    (`FileImages.kept`), so those files are decoded once; beyond it JPEGs are decoded at reduced scale,
    which still reads every byte, and embedding decodes them again.

    >>> data, report = scan_images(load_dataset("scans/"), on_error="skip")
    >>> report.skipped
    [{'path': 'scans/a/broken.png', 'reason': 'empty file (0 bytes)'}]
    """
    if on_error not in ON_ERROR:
        raise DatasetError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    started = time.perf_counter()
    images = dataset.images
    if not isinstance(images, FileImages):
        return dataset, ScanReport(on_error, len(dataset))
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda path: _check_one(path, images.kept), images.paths))
    bad = {row: outcome for row, outcome in enumerate(outcomes) if isinstance(outcome, ImageError)}
    notes = [{"path": str(images.paths[row]), "note": note} for row, outcome in enumerate(outcomes) if isinstance(outcome, list) for note in outcome]
    for note in notes:
        log.info("%s: %s", note["path"], note["note"])
    dataset, report = drop_unreadable(dataset, bad, on_error, check)
    report.notes, report.seconds = notes, time.perf_counter() - started
    return dataset, report


def drop_unreadable(dataset, bad, on_error, check=True):
    """(dataset without the rows of `bad` ({row: ImageError}), ScanReport): under "fail" every bad file is listed with
    its reason in one DatasetError instead; under "skip" each is logged and recorded. Shared by the local pre-scan and
    the Ray workers' reading (`medprobe.embedding.ray.read_on_cluster`)."""
    skipped = [{"path": error.path, "reason": error.reason} for _, error in sorted(bad.items())]
    if bad and on_error == "fail":
        listing = "\n".join(f"  {item['path']}: {item['reason']}" for item in skipped)
        raise DatasetError(
            f"{len(bad)} of {len(dataset)} images cannot be read:\n{listing}\n"
            "Fix or remove them, or pass --on-error skip to leave them out (each is then recorded in results.json)"
        )
    if bad:
        log.warning("skipping %d of %d unreadable images (each is recorded with its reason):", len(bad), len(dataset))
        for item in skipped:
            log.warning("  skipped %s: %s", item["path"], item["reason"])
        dataset = dataset.subset([row for row in range(len(dataset)) if row not in bad], check=check)
    return dataset, ScanReport(on_error, len(bad) + len(dataset), skipped)


def _check_one(path, kept):
    """The decode notes of one file, or its ImageError (returned, not raised, so every file gets scanned).

    A file whose pixels fit in `kept` is decoded in full and kept; the others only checked (JPEGs at reduced scale).
    """
    nbytes = decoded_bytes(path)
    keep = nbytes is not None and kept.reserve(nbytes)
    try:
        decoded = read_image(path, fast=not keep)
    except ImageError as e:
        if keep:
            kept.release(nbytes)
        return e
    if keep:
        kept.put(path, decoded.image, nbytes)
    return decoded.notes
