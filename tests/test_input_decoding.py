"""Issue 16: decoded-size limits before decoding, PALETTE COLOR through its palette, derived DICOM for projection
images without position, and patient values kept out of every message of the read and write path."""

from __future__ import annotations

import gzip
import logging
import shutil
import struct
import subprocess
import tracemalloc
import zlib

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_color_lut
from pydicom.tag import Tag
from pydicom.valuerep import DA

from medxgan_monai.io.dicom import redact_identifying_values
from medxgan_monai.io.dicom_derived import write_overlay_secondary_capture, write_saliency_parametric_map
from medxgan_monai.transforms import ImageReadError, LoadScan, load_scan

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


# --- issue 16, item 3: decoded bytes bounded before decoding -------------------------------------------------------


def _nifti_header_only(path, shape, dtype, vox_offset: int | None = None) -> None:
    """A .nii.gz whose header promises ``shape`` of ``dtype``; only a few bytes of data follow (a tiny file)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(vox_offset or 352)
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4 + b"\0" * 64)


def test_nifti_whose_header_promises_too_many_bytes_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    _nifti_header_only(path, (8192, 8192), np.float64)  # 8192^2 pixels is within the pixel limit; 512 MiB is not
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as error:
            load_scan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(error.value)
    assert "float64" in str(error.value) and "over the limit of 268435456 bytes" in str(error.value)
    assert peak < 8 * 2**20  # nothing near the promised size was allocated


def test_nifti_data_offset_counts_towards_the_decompressed_size(tmp_path):
    path = tmp_path / "far_offset.nii.gz"
    _nifti_header_only(path, (16, 16), np.uint8, vox_offset=300 * 2**20)  # nibabel would inflate 300 MiB first
    with pytest.raises(ImageReadError, match="offset 314572800.*over the limit"):
        load_scan(path)


def test_real_nifti_over_a_lower_byte_limit_is_rejected_and_under_it_loads(tmp_path):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64), np.float64), np.eye(4)), path)  # 32 KiB decoded
    with pytest.raises(ImageReadError, match=r"slice.nii.gz: image of shape \(64, 64\).*over the limit of 20000"):
        LoadScan(max_decoded_bytes=20_000)(str(path))
    assert LoadScan(max_decoded_bytes=40_000)(str(path)).shape == (1, 64, 64)


def test_dicom_bytes_count_samples_and_bits_allocated(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 8192  # within the pixel limit ...
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0  # ... but 384 MiB
    ds.save_as(tmp_path / "rgb16.dcm")
    with pytest.raises(ImageReadError, match=r"rgb16.dcm: .*3 sample\(s\) x 16 bits.*over the limit"):
        load_scan(tmp_path / "rgb16.dcm")


def test_png_bytes_count_bands(tmp_path):
    Image.fromarray(np.zeros((100, 100, 4), np.uint8)).save(tmp_path / "rgba.png")  # 40 000 bytes decoded
    with pytest.raises(ImageReadError, match=r"rgba.png: .*mode RGBA.*40000 bytes, over the limit of 30000"):
        LoadScan(max_decoded_bytes=30_000)(str(tmp_path / "rgba.png"))


def _png_header_only(path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_png_beyond_pillows_bomb_limit_gets_our_message(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 20000, 20000)  # Pillow refuses to open it at all
    with pytest.raises(ImageReadError, match="huge.png: "):
        load_scan(path)


# --- issue 16, item 12: PALETTE COLOR through its palette ---------------------------------------------------------


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "examples_palette.dcm"])
def test_palette_colour_dicom_is_read_through_its_palette(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64).mean(-1).T
    image = load_scan(path)[0].numpy()
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-2)
    indices = ds.pixel_array.T.astype(np.float64)
    assert not np.allclose(image, indices)


# --- issue 16, item 11: derived DICOM for projection images --------------------------------------------------------


def _small_header(name: str, **attributes) -> pydicom.Dataset:
    """The header of a pydicom test file (no pixels: the writers need none), on a small grid to keep tests fast."""
    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
    ds.Rows, ds.Columns = 24, 32
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _saliency(ds) -> np.ndarray:
    return np.linspace(0, 1, ds.Rows * ds.Columns, dtype=np.float32).reshape(ds.Rows, ds.Columns)


@pytest.mark.parametrize(
    "name, spacing",
    [
        ("RG1_UNCI.dcm", (1.0, 1.0)),  # CR chest radiograph, MONOCHROME1, PixelSpacing 0: the loader's 1 mm
        ("SC_rgb.dcm", (1.0, 1.0)),  # colour secondary capture, no frame of reference
        ("OBXXXX1A.dcm", (1.0, 1.0)),  # ultrasound, PALETTE COLOR
        ("US1_UNCR.dcm", (1.0, 1.0)),  # ultrasound, RGB
    ],
)
def test_parametric_map_and_overlay_for_images_without_position(tmp_path, name, spacing):
    source = _small_header(name)
    assert "ImagePositionPatient" not in source and "FrameOfReferenceUID" not in source
    saliency = _saliency(source)
    write_saliency_parametric_map(source, saliency, tmp_path / "pm.dcm")
    write_overlay_secondary_capture(source, np.zeros((24, 32, 3), np.uint8), tmp_path / "sc.dcm")

    written = pydicom.dcmread(tmp_path / "pm.dcm")
    assert written.SOPClassUID == PARAMETRIC_MAP_STORAGE
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    np.testing.assert_array_equal(written.pixel_array, saliency)
    shared = written.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == list(spacing)
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    position = written.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in position] == [0, 0, 0]
    assert "nominal plane geometry" in written.ContentDescription
    assert hd.pm.ParametricMap.from_dataset(written).SOPInstanceUID == written.SOPInstanceUID  # highdicom reads it
    overlay = pydicom.dcmread(tmp_path / "sc.dcm")
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "PixelSpacing" not in overlay or all(float(v) > 0 for v in overlay.PixelSpacing)


def test_radiograph_map_uses_the_imager_pixel_spacing_and_the_source_orientation(tmp_path):
    source = _small_header("RG1_UNCI.dcm", ImagerPixelSpacing=[0.2, 0.175])
    del source.PixelSpacing
    write_saliency_parametric_map(source, _saliency(source), tmp_path / "pm.dcm")
    write_overlay_secondary_capture(source, np.zeros((24, 32, 3), np.uint8), tmp_path / "sc.dcm")
    shared = pydicom.dcmread(tmp_path / "pm.dcm").SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.2, 0.175]
    assert list(pydicom.dcmread(tmp_path / "sc.dcm").PatientOrientation) == list(source.PatientOrientation)


def test_positioned_sources_keep_their_geometry_and_frame_of_reference(tmp_path):
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    write_saliency_parametric_map(source, np.zeros((source.Rows, source.Columns)), tmp_path / "pm.dcm")
    written = pydicom.dcmread(tmp_path / "pm.dcm")
    assert written.FrameOfReferenceUID == source.FrameOfReferenceUID
    position = written.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    np.testing.assert_allclose([float(v) for v in position], [float(v) for v in source.ImagePositionPatient])
    assert "nominal" not in written.ContentDescription


def test_explicit_uids_make_a_redelivered_object_the_same(tmp_path):
    source = _small_header("RG1_UNCI.dcm")
    uids = {"series_instance_uid": "1.2.826.0.1.3680043.8.498.1", "sop_instance_uid": "1.2.826.0.1.3680043.8.498.2"}
    assert (
        write_saliency_parametric_map(source, _saliency(source), tmp_path / "pm.dcm", **uids)
        == uids["sop_instance_uid"]
    )
    written = pydicom.dcmread(tmp_path / "pm.dcm")
    assert (written.SeriesInstanceUID, written.SOPInstanceUID) == tuple(uids.values())


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "SC_rgb.dcm", "CT_small.dcm"])
def test_derived_objects_pass_dciodvfy(tmp_path, name):
    source = _small_header(name)
    write_saliency_parametric_map(source, _saliency(source), tmp_path / "pm.dcm")
    write_overlay_secondary_capture(source, np.zeros((24, 32, 3), np.uint8), tmp_path / "sc.dcm")
    for path in (tmp_path / "pm.dcm", tmp_path / "sc.dcm"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


# --- issue 16, item 13: invalid patient values are tolerated and never quoted --------------------------------------

SECRETS = ("03.02.1901", "7O kg", "Zyxwvut", "ID-98765-Q")


def _dicom_with_odd_patient_values(path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds[0x00100030] = RawDataElement(Tag(0x00100030), "DA", 10, b"03.02.1901", 0, False, True)  # PatientBirthDate
    ds[0x00101030] = RawDataElement(Tag(0x00101030), "DS", 6, b"7O kg ", 0, False, True)  # PatientWeight
    ds.PatientName = "Zyxwvut^Qqqq"
    ds.PatientID = "ID-98765-Q"
    ds.save_as(path)


def _quoted(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_invalid_birth_date_is_blanked_and_no_message_quotes_patient_values(tmp_path, caplog, recwarn):
    _dicom_with_odd_patient_values(tmp_path / "odd.dcm")
    caplog.set_level(logging.DEBUG)
    image = load_scan(tmp_path / "odd.dcm")  # MONAI copies every attribute; pydicom logs what it cannot convert
    source = pydicom.dcmread(tmp_path / "odd.dcm", stop_before_pixels=True)
    saliency = np.zeros((source.Rows, source.Columns), np.float32)
    write_saliency_parametric_map(source, saliency, tmp_path / "pm.dcm")
    write_overlay_secondary_capture(source, np.zeros((source.Rows, source.Columns, 3), np.uint8), tmp_path / "sc.dcm")

    assert image.shape == (1, source.Columns, source.Rows)
    for name in ("pm.dcm", "sc.dcm"):
        written = pydicom.dcmread(tmp_path / name)
        assert written.PatientBirthDate == ""  # invalid for DA: left empty, the instance is still explained
        assert written.PatientID == "ID-98765-Q"  # valid values are copied as they are
    messages = [record.getMessage() for record in caplog.records] + [str(warning.message) for warning in recwarn]
    assert any("PatientBirthDate" in message for message in messages)  # the problem is named by keyword
    assert not _quoted("\n".join(messages))


def test_errors_name_the_attribute_never_its_value(tmp_path, caplog):
    _dicom_with_odd_patient_values(tmp_path / "odd.dcm")
    source = pydicom.dcmread(tmp_path / "odd.dcm", stop_before_pixels=True)
    with pytest.raises(ValueError) as error:
        DA(str(source.PatientBirthDate))  # what highdicom raised, value quoted
    assert "03.02.1901" in str(error.value)
    assert (
        redact_identifying_values(str(error.value), source) == "Unable to convert '<PatientBirthDate>' to 'DA' object"
    )
    # an error in the derived path: the message names the file and the problem, and quotes nothing
    source.StudyInstanceUID = "not a UID " + "ID-98765-Q"
    caplog.clear()  # pydicom warned about the assignment above, in this test's own code
    with pytest.raises(ValueError) as error:
        write_saliency_parametric_map(source, np.zeros((source.Rows, source.Columns)), tmp_path / "pm.dcm")
    assert str(tmp_path / "pm.dcm") in str(error.value)
    assert not _quoted(str(error.value)) and error.value.__cause__ is None and error.value.__context__ is None
    assert not _quoted(caplog.text)


def test_a_reader_error_quoting_a_patient_value_is_redacted(tmp_path, monkeypatch):
    _dicom_with_odd_patient_values(tmp_path / "odd.dcm")

    def failing_get_data(self, data):  # as pydicom fails when a value cannot be converted
        raise ValueError(f"Unable to convert '{data.PatientName}' ('Zyxwvut Qqqq') and '03.02.1901'")

    monkeypatch.setattr("medxgan_monai.transforms.io.DicomSliceReader.get_data", failing_get_data)
    with pytest.raises(ImageReadError) as error:
        load_scan(tmp_path / "odd.dcm")
    assert str(tmp_path / "odd.dcm") in str(error.value)
    assert "'<PatientName>' ('<PatientName>') and '<PatientBirthDate>'" in str(error.value)
    assert not _quoted(str(error.value)) and error.value.__cause__ is None and error.value.__context__ is None
