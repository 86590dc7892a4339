"""DICOM decoding: pydicom's real test files (offline ones only) and tiny generated ones."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import write_dicom
from medprobe.core.errors import ImageError
from medprobe.data.images import read_image


def pydicom_file(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed offline")
    return path


def pixels_of(path):
    return np.asarray(read_image(path).image)


# --- real files from pydicom's test data ------------------------------------------------------


@pytest.mark.parametrize(
    "name, mode",
    [
        ("CT_small.dcm", "L"),
        ("MR_small.dcm", "L"),
        ("JPEG2000.dcm", "L"),
        ("693_J2KI.dcm", "L"),
        ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),
        ("ExplVR_BigEnd.dcm", "RGB"),
        ("SC_rgb_small_odd.dcm", "RGB"),
        ("examples_palette.dcm", "RGB"),
    ],
)
def test_real_dicom_files_decode_to_8bit_with_contrast(name, mode):
    image = read_image(pydicom_file(name)).image
    pixels = np.asarray(image)
    assert image.mode == mode and pixels.dtype == np.uint8
    assert pixels.max() > pixels.min()


@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_files_decode_exactly_like_the_uncompressed_one(compressed):
    from pydicom.pixels import get_decoder

    path = pydicom_file(compressed)
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(syntax).is_available:
        with pytest.raises(ImageError, match=syntax.name):
            read_image(path)
        return
    np.testing.assert_array_equal(pixels_of(path), pixels_of(pydicom_file("MR_small.dcm")))


def test_a_dicom_without_pixel_data_is_refused_by_name():
    with pytest.raises(ImageError, match="no pixel data.*RT Plan"):
        read_image(pydicom_file("rtplan.dcm"))


def test_a_missing_decoder_package_names_the_transfer_syntax_and_the_fix(monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-libjpeg"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ImageError, match=r"JPEG-LS Lossless.*pylibjpeg-libjpeg.*medprobe\[dicom\]"):
        read_image(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))


def test_a_transfer_syntax_no_plugin_decodes_is_named(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(ImageError, match="MPEG2 Main Profile"):
        read_image(tmp_path / "video.dcm")


# --- generated files ----------------------------------------------------------------------------

RAMP = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)  # 0..4080: 12-bit data


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path):
    mono2 = pixels_of(write_dicom(tmp_path / "m2.dcm", RAMP, bits_stored=12))
    mono1 = pixels_of(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_array_equal(mono1.astype(int) + mono2, 255)
    assert mono2[0, 0] == 0 and mono2[-1, -1] == 255


def test_bits_above_bits_stored_are_ignored(tmp_path):
    clean = pixels_of(write_dicom(tmp_path / "clean.dcm", RAMP, bits_stored=12))
    overlay = pixels_of(write_dicom(tmp_path / "overlay.dcm", RAMP | 0xF000, bits_stored=12))  # overlay bits above bit 11
    np.testing.assert_array_equal(clean, overlay)


def test_signed_12_bit_values_keep_their_order(tmp_path):
    values = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    stored = values.view(np.uint16) & 0x0FFF  # two's complement in 12 bits, as a scanner writes it
    pixels = pixels_of(write_dicom(tmp_path / "signed.dcm", stored, bits_stored=12, signed=True))
    assert list(pixels[0]) == sorted(pixels[0]) and pixels[0, 0] == 0 and pixels[0, -1] == 255


def test_rescale_then_window_maps_the_window_to_black_and_white(tmp_path):
    # stored 0..4080 -> HU = 2 * stored - 1024; window centre 0, width 200 shows -100..100 HU
    path = write_dicom(
        tmp_path / "ct.dcm", RAMP, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=200
    )
    hu = RAMP.astype(float) * 2 - 1024
    pixels = pixels_of(path)
    assert (pixels[hu <= -100] == 0).all() and (pixels[hu > 100] == 255).all()
    inside = (hu > -99) & (hu < 99)
    expected = ((hu[inside] - (-0.5)) / 199 + 0.5) * 255  # DICOM LINEAR window, output 0..255
    np.testing.assert_allclose(pixels[inside], expected, atol=1.0)


def test_a_voi_lut_sequence_wins_over_the_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 12])
    lut.add_new("LUTData", "US", [4095 - i for i in range(4096)])  # an inverting LUT
    path = write_dicom(tmp_path / "lut.dcm", RAMP, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = Sequence([lut])
    ds.save_as(path)
    pixels = pixels_of(path)
    assert pixels[0, 0] == 255 and pixels[-1, -1] <= 1  # RAMP tops out at 4080, not 4095
    np.testing.assert_allclose(pixels, np.rint((4095 - RAMP.astype(float)) * 255 / 4095), atol=1)


def test_without_a_window_the_image_range_is_stretched(tmp_path):
    narrow = (RAMP // 16 + 1000).astype(np.uint16)  # 1000..1255: would look flat grey on a 12-bit scale
    pixels = pixels_of(write_dicom(tmp_path / "narrow.dcm", narrow, bits_stored=12))
    assert pixels.min() == 0 and pixels.max() == 255


def test_multi_frame_takes_the_first_frame_and_says_so(tmp_path):
    frames = np.stack([RAMP, RAMP[::-1], RAMP[:, ::-1]])
    decoded = read_image(write_dicom(tmp_path / "cine.dcm", frames, bits_stored=12, frames=3))
    np.testing.assert_array_equal(np.asarray(decoded.image), pixels_of(write_dicom(tmp_path / "one.dcm", RAMP, bits_stored=12)))
    assert decoded.notes == ["multi-frame DICOM (3 frames); used frame 1"]


@pytest.mark.parametrize("photometric", ["YBR_PARTIAL_420", "HSV", "ARGB"])
def test_unsupported_photometric_interpretation_is_named(tmp_path, photometric):
    path = write_dicom(tmp_path / "odd.dcm", RAMP)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = photometric
    ds.save_as(path)
    with pytest.raises(ImageError, match=f"PhotometricInterpretation '{photometric}' is not supported"):
        read_image(path)


def test_rgb_dicom_keeps_its_colours(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    pixels = pixels_of(write_dicom(tmp_path / "red.dcm", rgb, photometric="RGB"))
    assert pixels.shape == (8, 8, 3) and (pixels[..., 0] == 200).all() and (pixels[..., 1:] == 0).all()


def test_a_dicom_without_preamble_or_extension_is_read_by_content(tmp_path):
    path = write_dicom(tmp_path / "full.dcm", RAMP, bits_stored=12)
    raw = path.read_bytes()
    (tmp_path / "IM0001").write_bytes(raw)  # no extension, as PACS exports often are
    np.testing.assert_array_equal(pixels_of(tmp_path / "IM0001"), pixels_of(path))
    no_preamble = tmp_path / "bare.dcm"
    no_preamble.write_bytes(raw[132:])
    np.testing.assert_array_equal(pixels_of(no_preamble), pixels_of(path))


def test_an_oversized_dicom_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPROBE_MAX_PIXELS", "100")
    with pytest.raises(ImageError, match="decompression-bomb limit"):
        read_image(write_dicom(tmp_path / "big.dcm", RAMP))


def test_a_truncated_dicom_is_an_image_error(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", RAMP, bits_stored=12)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ImageError):
        read_image(path)
