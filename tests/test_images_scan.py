"""The pre-scan and --on-error: every bad file named with its reason; good ones go on under skip."""

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import QUICK, write_dicom, write_image_folder
from medprobe.cli import main
from medprobe.core.errors import DatasetError
from medprobe.data.datasets import load_dataset
from medprobe.data.scan import scan_images


def _png_bomb():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _encoded(fmt, size=48, seed=0):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_broken_files(folder):
    """One file of each broken kind in `folder`; returns {file name: words its reason must contain}."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(_encoded("PNG")[:300])
    (folder / "truncated.jpg").write_bytes(_encoded("JPEG")[:-200])
    (folder / "notes.png").write_bytes(b"these are my notes, not an X-ray\n")
    (folder / "bomb.png").write_bytes(_png_bomb())
    ramp = (np.arange(256).reshape(16, 16) * 16).astype(np.uint16)
    write_dicom(folder / "photometric.dcm", ramp, bits_stored=12)
    ds = pydicom.dcmread(folder / "photometric.dcm")
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.save_as(folder / "photometric.dcm")
    ds = pydicom.dcmread(folder / "photometric.dcm")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(folder / "video.dcm")
    write_dicom(folder / "cut.dcm", ramp, bits_stored=12)
    (folder / "cut.dcm").write_bytes((folder / "cut.dcm").read_bytes()[:-200])
    shutil.copy(get_testdata_file("rtplan.dcm", download=False), folder / "plan.dcm")
    return {
        "zero.png": "empty file",
        "truncated.png": "truncated",
        "truncated.jpg": "truncated",
        "notes.png": "not a recognised image format",
        "bomb.png": "over the decompression-bomb limit",
        "photometric.dcm": "PhotometricInterpretation 'YBR_PARTIAL_420' is not supported",
        "video.dcm": "MPEG2",
        "cut.dcm": "",
        "plan.dcm": "no pixel data",
    }


def write_odd_but_good_files(folder):
    """Files that must decode (with a note where worth recording); returns {file name: expected note or None}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "liar.png").write_bytes(_encoded("JPEG", seed=1))
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(np.full((48, 48, 4), 128, np.uint8), "RGBA").save(folder / "rgba.png")
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("P", (48, 48), 3).save(folder / "palette.gif")
    Image.new("LA", (48, 48), (90, 200)).save(folder / "la.png")
    ramp = (np.arange(48 * 48).reshape(48, 48)).astype(np.uint16)
    write_dicom(folder / "mono1.dcm", ramp, photometric="MONOCHROME1", bits_stored=12)
    write_dicom(folder / "cine.dcm", np.stack([ramp, ramp[::-1]]), bits_stored=12, frames=2)
    return {
        "liar.png": "extension .png but the content is JPEG; decoded as JPEG",
        "cine.dcm": "multi-frame DICOM (2 frames); used frame 1",
        "sixteen.png": None, "rgba.png": None, "cmyk.jpg": None, "palette.gif": None, "la.png": None, "mono1.dcm": None,
    }


def mixed_dataset(root):
    """split/class/image folders: good PNGs, odd-but-good files, and broken ones spread over train and test."""
    write_image_folder(root, classes=("a", "b"), per_class=5, splits=("train", "test"))
    broken = write_broken_files(root / "train" / "a")
    odd = write_odd_but_good_files(root / "train" / "b")
    return broken, odd


def test_fail_lists_every_bad_file_with_its_reason(tmp_path):
    broken, _ = mixed_dataset(tmp_path / "d")
    with pytest.raises(DatasetError) as caught:
        scan_images(load_dataset(tmp_path / "d"), on_error="fail")
    message = str(caught.value)
    assert f"{len(broken)} of " in message and "--on-error skip" in message
    for name, reason in broken.items():
        line = next(line for line in message.splitlines() if line.strip().startswith(str(tmp_path / "d" / "train" / "a" / name)))
        assert reason in line, line


def test_skip_drops_bad_rows_and_records_them_and_the_notes(tmp_path):
    broken, odd = mixed_dataset(tmp_path / "d")
    data = load_dataset(tmp_path / "d")
    kept, report = scan_images(data, on_error="skip")
    assert len(kept) == len(data) - len(broken)
    assert sorted(p.name for p in kept.images.paths if p.parent.name == "a" and p.parent.parent.name == "train") == [f"a_{i}.png" for i in range(5)]
    assert {item["path"].rsplit("/", 1)[1] for item in report.skipped} == set(broken)
    noted = {item["path"].rsplit("/", 1)[1]: item["note"] for item in report.notes}
    assert noted == {name: note for name, note in odd.items() if note}
    assert kept.ids.tolist() == [i for i in data.ids.tolist() if not any(i.endswith("/" + name) for name in broken)]


def test_a_csv_manifest_with_missing_and_broken_files(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=6)
    (tmp_path / "imgs" / "a" / "zero.png").write_bytes(b"")
    rows = [f"imgs/{c}/{c}_{i}.png,{c}" for c in "ab" for i in range(6)] + ["imgs/a/zero.png,a", "imgs/a/gone.png,a"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"(?s)2 of 14 images.*zero.png: empty file.*gone.png: file not found"):
        scan_images(load_dataset(tmp_path / "m.csv"))
    kept, report = scan_images(load_dataset(tmp_path / "m.csv"), on_error="skip")
    assert len(kept) == 12 and len(report.skipped) == 2


def test_arrays_need_no_scan(tmp_path):
    from conftest import write_npz

    data = load_dataset(write_npz(tmp_path / "t.npz"))
    kept, report = scan_images(data)
    assert kept is data and report.skipped == [] and report.scanned == len(data)


def test_dicom_in_folders_and_manifests_including_extensionless(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)
    for cls, photometric in (("a", "MONOCHROME1"), ("b", "MONOCHROME2")):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(6):
            write_dicom(tmp_path / "d" / cls / f"IM{i:04d}", ramp + i, photometric=photometric, bits_stored=12)
    data = load_dataset(tmp_path / "d")
    assert len(data) == 12 and data.label_names == ["a", "b"]
    _, report = scan_images(data)
    assert report.skipped == []


def test_run_cli_fails_before_embedding_and_skip_records_in_results(tmp_path, capsys):
    broken, _ = mixed_dataset(tmp_path / "d")
    assert main(["run", "--dataset", str(tmp_path / "d"), "--out", str(tmp_path / "r1"), "--quiet", "--n-boot", "20"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in broken) and not (tmp_path / "cache").exists()  # nothing embedded
    code = main(["run", "--dataset", str(tmp_path / "d"), "--out", str(tmp_path / "r2"), "--quiet", "--n-boot", "20", "--on-error", "skip", *QUICK])
    assert code == 0
    images = json.loads((tmp_path / "r2" / "results.json").read_text())["images"]
    assert images["on_error"] == "skip" and {item["path"].rsplit("/", 1)[1] for item in images["skipped"]} == set(broken)
    assert all(item["reason"] for item in images["skipped"])
