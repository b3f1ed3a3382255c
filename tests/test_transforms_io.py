"""Scan loading on real files shipped by pydicom, pydicom-data and nibabel, and clear errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data import PydicomReader
from monai.transforms import LoadImage
from PIL import Image
from pydicom.data import get_testdata_file

from medxgan_monai.transforms import ImageReadError, LoadScand, detect_format, load_scan

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _in_plane_spacing(image) -> np.ndarray:
    return np.abs(np.diag(image.affine.numpy())[:2])


def test_ct_slice_matches_monai_pydicom_reader():
    path = get_testdata_file("CT_small.dcm")
    ours = load_scan(path)
    reference = LoadImage(reader=PydicomReader(), image_only=True, ensure_channel_first=True)(path)
    assert ours.shape == (1, 128, 128)
    np.testing.assert_allclose(ours.numpy(), reference.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine.numpy(), atol=1e-6)
    # rescale slope/intercept applied: CT_small stores raw values with intercept -1024
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(ours[0].numpy(), expected)


def test_mr_jpeg2000_lossless_decodes_like_the_uncompressed_copy():
    plain = load_scan(get_testdata_file("MR_small.dcm"))
    compressed = load_scan(get_testdata_file("MR_small_jp2klossless.dcm"))
    np.testing.assert_array_equal(plain.numpy(), compressed.numpy())


def test_monochrome1_radiograph_is_inverted_and_uses_its_spacing(tmp_path):
    path = get_testdata_file("RG1_UNCI.dcm")  # pydicom-data: a CR chest radiograph, MONOCHROME1, no position tags
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "ImagePositionPatient" not in ds
    image = load_scan(path)
    assert image.shape == (1, ds.Columns, ds.Rows)
    high = 2 ** int(ds.BitsStored) - 1
    np.testing.assert_allclose(image[0].numpy(), high - ds.pixel_array.T.astype(np.float64))
    # its PixelSpacing is 0: the reader falls back to ImagerPixelSpacing, then 1 mm, never a zero spacing
    assert np.allclose(_in_plane_spacing(image), [1.0, 1.0])

    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.175, 0.2]
    copy = tmp_path / "cr_imager_spacing.dcm"
    ds.save_as(copy)
    spaced = load_scan(copy)
    assert np.allclose(_in_plane_spacing(spaced), [0.2, 0.175])


def test_pixel_spacing_is_honoured_when_position_tags_are_missing(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del ds.ImagePositionPatient
    del ds.ImageOrientationPatient
    ds.PixelSpacing = [0.5, 0.25]
    path = tmp_path / "no_position.dcm"
    ds.save_as(path)
    image = load_scan(path)
    assert np.allclose(_in_plane_spacing(image), [0.25, 0.5])


def test_nifti_volume_from_nibabel_loads_in_3d_and_is_rejected_in_2d():
    path = NIBABEL_DATA / "anatomical.nii"
    volume = load_scan(path, spatial_dims=None)
    assert tuple(volume.shape[1:]) == nib.load(path).shape
    np.testing.assert_allclose(volume.affine.numpy(), nib.load(path).affine, atol=1e-5)
    with pytest.raises(ImageReadError, match="anatomical.nii: expected a 2D image"):
        load_scan(path)


def test_4d_nifti_is_rejected_with_its_name():
    with pytest.raises(ImageReadError, match="example4d.nii.gz"):
        load_scan(NIBABEL_DATA / "example4d.nii.gz")


def test_singleton_slice_axis_is_dropped(tmp_path):
    data = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 3.0, 1.0])), path)
    image = load_scan(path)
    assert image.shape == (1, 20, 30)
    np.testing.assert_array_equal(image[0].numpy(), data[..., 0])


def test_png_grey_and_rgb(tmp_path):
    grey = (np.arange(24 * 16).reshape(24, 16) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = np.stack([grey, grey // 2, grey // 4], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    loaded = load_scan(tmp_path / "grey.png")
    # MONAI's PIL reader returns (width, height), the same index order as the NIfTI and DICOM readers
    assert loaded.shape == (1, 16, 24)
    np.testing.assert_array_equal(loaded[0].numpy(), grey.T)
    np.testing.assert_allclose(load_scan(tmp_path / "rgb.png")[0].numpy(), rgb.mean(-1).T, rtol=1e-6)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.nii.gz", b"", "file is empty"),
        ("notes.txt", b"not an image", "unsupported format"),
        ("truncated.nii.gz", None, "cannot read as nifti"),
        ("truncated.dcm", "dicom", "no pixel data (truncated"),
        ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "cannot read as bitmap"),
    ],
)
def test_bad_files_raise_an_error_naming_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    if content is None:
        path.write_bytes((NIBABEL_DATA / "example4d.nii.gz").read_bytes()[:300])
    elif content == "dicom":
        path.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as error:
        load_scan(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        load_scan(tmp_path / "absent.nii.gz")
    with pytest.raises(ImageReadError, match="is a folder"):
        detect_format(tmp_path)


def test_dicom_without_suffix_is_detected(tmp_path):
    path = tmp_path / "IM000001"
    path.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    assert detect_format(path) == "dicom"
    assert LoadScand(keys="image")({"image": os.fspath(path)})["image"].shape == (1, 64, 64)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
)
def test_lossless_transfer_syntaxes_decode_like_the_uncompressed_copy(name):
    np.testing.assert_array_equal(
        load_scan(get_testdata_file(name)).numpy(), load_scan(get_testdata_file("MR_small.dcm")).numpy()
    )


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "image_dfl.dcm", "MR2_J2KI.dcm"])
def test_other_compressed_transfer_syntaxes_decode(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    image = load_scan(path)
    assert image.shape == (1, ds.Columns, ds.Rows) and np.isfinite(image.numpy()).all() and image.std() > 0


def test_undecodable_compression_is_named():
    path = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG Extended: no permissively licensed decoder
    with pytest.raises(ImageReadError, match="JPEG Extended.*cannot be decoded by the installed decoders"):
        load_scan(path)


def test_colour_dicom_is_averaged_to_grey():
    path = get_testdata_file("SC_rgb.dcm")
    expected = pydicom.dcmread(path).pixel_array.astype(np.float32).mean(-1).T
    np.testing.assert_allclose(load_scan(path)[0].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "name, problem",
    [("emri_small.dcm", "multi-frame DICOM with 10 frames"), ("rtplan.dcm", "no pixel data")],
)
def test_multi_frame_and_pixel_less_dicom_are_rejected(name, problem):
    with pytest.raises(ImageReadError, match=problem):
        load_scan(get_testdata_file(name))


def test_voi_lut_and_window_are_display_only(tmp_path):
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 600, 200
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData
    ds.VOILUTSequence = pydicom.Sequence([lut])
    ds.save_as(tmp_path / "windowed.dcm")
    np.testing.assert_array_equal(load_scan(tmp_path / "windowed.dcm").numpy(), load_scan(path).numpy())


@pytest.mark.parametrize(
    "bits_allocated, bits_stored, signed, slope, intercept",
    [(8, 8, False, 1.0, 0.0), (16, 12, False, 2.0, -100.0), (16, 16, True, 1.0, 0.0)],
)
def test_8_12_and_16_bit_pixels_keep_their_values(tmp_path, bits_allocated, bits_stored, signed, slope, intercept):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    rng = np.random.default_rng(bits_stored)
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if signed else (0, 2**bits_stored)
    stored = rng.integers(low, high, size=(20, 30))
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(bits_allocated, signed)]
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype(dtype).tobytes()
    ds.save_as(tmp_path / "bits.dcm")
    np.testing.assert_allclose(load_scan(tmp_path / "bits.dcm")[0].numpy(), (stored * slope + intercept).T)


def test_oversized_images_are_rejected_from_the_header(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 30000  # the header promises 900 M pixels; the few bytes present are never decoded
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(ImageReadError, match=r"\(30000, 30000\) exceeds the limit"):
        load_scan(tmp_path / "huge.dcm")
    nib.save(nib.Nifti1Image(np.zeros((40, 40), np.float32), np.eye(4)), tmp_path / "small.nii.gz")
    with pytest.raises(ImageReadError, match="exceeds the limit of 1000 pixels"):
        LoadScand(keys="image", max_pixels=1000)({"image": str(tmp_path / "small.nii.gz")})
