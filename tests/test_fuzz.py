"""Hypothesis fuzzing: hostile image bytes and CSV manifests either work or raise medprobe's own errors."""

import io
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from medprobe.core.errors import MedprobeError
from medprobe.data.datasets import load_dataset
from medprobe.data.images import read_image
from medprobe.data.scan import scan_images

WORK = Path(tempfile.mkdtemp(prefix="medprobe-fuzz-"))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_files():
    from conftest import write_dicom

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    files = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("GIF", ".gif"), ("BMP", ".bmp"), ("WEBP", ".webp")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        files[suffix] = buffer.getvalue()
    write_dicom(WORK / "seed.dcm", (rng.integers(0, 4096, (16, 16))).astype(np.uint16), bits_stored=12, WindowCenter=2048, WindowWidth=1000)
    files[".dcm"] = (WORK / "seed.dcm").read_bytes()
    return files


VALID = _valid_files()


def decodes_or_image_error(data, suffix):
    path = WORK / f"fuzz{suffix}"
    path.write_bytes(data)
    for fast in (False, True):
        try:
            image = read_image(path, fast=fast).image
        except MedprobeError:
            event("ImageError")
            continue
        event("decoded")
        assert image.mode in ("L", "RGB") and image.size[0] > 0 and image.size[1] > 0


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_mutated_image_bytes(suffix, data):
    original = bytearray(VALID[suffix])
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "flip":
        for offset in data.draw(st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=8)):
            original[offset] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        original = original[: data.draw(st.integers(0, len(original)))]
    else:
        at = data.draw(st.integers(0, len(original)))
        original[at:at] = data.draw(st.binary(max_size=64))
    decodes_or_image_error(bytes(original), data.draw(st.sampled_from([suffix, ".png", ".dcm", ""])))


@FUZZ
@given(st.binary(max_size=512), st.sampled_from([".png", ".jpg", ".dcm", ".tif", ""]))
def test_random_bytes(data, suffix):
    decodes_or_image_error(data, suffix)


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_after_a_dicom_preamble(tail):
    decodes_or_image_error(bytes(128) + b"DICM" + tail, ".dcm")


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
names = st.sampled_from(["img0.png", "img1.png", "img2.png", "missing.png", "../img0.png", "/etc/passwd", "", " img1.png "])


@FUZZ
@given(
    header=st.lists(st.sampled_from(["path", "label", "split", "extra", "", "PATH"]), min_size=0, max_size=4),
    rows=st.lists(st.tuples(names, cells, st.sampled_from(["", "train", "val", "test", "TEST", "holdout"])), max_size=12),
    raw=st.binary(max_size=64),
    use_raw=st.booleans(),
)
def test_csv_manifests(header, rows, raw, use_raw):
    folder = WORK / "csv"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        if not (folder / f"img{i}.png").exists():
            Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(folder / f"img{i}.png")
    manifest = folder / "m.csv"
    if use_raw:
        manifest.write_bytes(",".join(header).encode() + b"\n" + raw)
    else:
        lines = [",".join(header)] + [",".join(row[: max(1, len(header))]) for row in rows]
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        data = load_dataset(manifest)
    except MedprobeError as e:
        event(f"refused: {type(e).__name__}")
        return
    event("loaded")
    assert len(data.ids) == len(data.labels) == len(data.images)
    for policy in ("fail", "skip"):
        try:
            kept, report = scan_images(data, on_error=policy)
        except MedprobeError:
            continue
        assert len(kept) + len(report.skipped) == len(data)
