"""Enhanced multi-frame DICOM volumes (issue 20): read as one volume whose frames are sorted along their normal,
loaded frame by frame like single-frame slices, explained into one Parametric Map and one SEG that reference the
instance's frames; and a volume's Secondary Capture overlays as one series, on request. The node takes an enhanced
multi-frame instance as one volume."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import TINY_BUNDLE, dciodvfy_errors
from pydicom.uid import generate_uid

from medxgan_monai.bundle import run_inference
from medxgan_monai.data.inputs import collect_inputs, screen_inputs
from medxgan_monai.data.volumes import DICOM_MULTIFRAME
from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice
from medxgan_monai.io.series import SeriesError, read_dicom_multiframe, read_dicom_series
from medxgan_monai.node import ExplanationProcessor, Spool, instance_problem
from medxgan_monai.transforms.io import LoadScan, LoadScand, load_scan

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SLICES = 6
#: oblique (rows turned 30 degrees, columns tilted 20 degrees) and anisotropic, so no axis can be mistaken for another
ROW = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])
_TILTED = np.array([-np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0]) * np.cos(np.pi / 9) + [0, 0, -np.sin(np.pi / 9)]
COLUMN = _TILTED / np.linalg.norm(_TILTED)
#: frame k + 1 of the multi-frame instance holds slice FRAME_ORDER[k] of the series: not in order along the normal
FRAME_ORDER = [3, 0, 5, 1, 4, 2]


def _write_series(folder: Path, rows: int = 36, columns: int = 40) -> list[Path]:
    folder.mkdir(parents=True)
    patient = SyntheticPatient("MF-TEST", "Multi^Frame")
    step = np.cross(ROW, COLUMN) * 2.5
    rng = np.random.default_rng(0)
    paths = []
    for k in range(SLICES):
        geometry = MRSliceGeometry(
            image_position=tuple(np.array([-12.0, 30.5, 41.0]) + k * step),
            image_orientation=(*ROW, *COLUMN),
            pixel_spacing=(0.7, 1.3),
            slice_thickness=2.0,
        )
        grid = np.stack(np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, columns), indexing="ij"))
        disc = (np.sqrt((grid**2).sum(0)) < 0.3 + 0.1 * k).astype(np.float64)
        pixels = (800 * disc + 100 * rng.random((rows, columns))).astype(np.uint16)
        paths.append(folder / f"IM{k:04d}.dcm")
        write_mr_slice(pixels, geometry, patient, paths[-1], instance_number=k + 1)
    return paths


def _multiframe(
    series: list[Path], path: Path, order: list[int] = FRAME_ORDER, rescale: tuple[int, int] | None = (2, -100)
) -> Path:
    """The series as one Legacy Converted Enhanced MR instance (highdicom), frames in ``order``, with ``rescale``
    (slope, intercept) as the shared Pixel Value Transformation that the loader must apply."""
    datasets = [pydicom.dcmread(p) for p in series]
    for dataset in datasets:  # the converter needs a window for its Frame VOI LUT macro
        dataset.WindowCenter, dataset.WindowWidth = 500, 1000
    converted = hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=generate_uid(),
        series_number=7,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    # the converter orders frames its own way: put them in ``order`` of the series, each with its functional group
    by_position = {round(float(ds.ImagePositionPatient @ np.cross(ROW, COLUMN)), 3): k for k, ds in enumerate(datasets)}
    frames = converted.pixel_array
    groups = list(converted.PerFrameFunctionalGroupsSequence)
    slice_of_frame = [
        by_position[
            round(float(np.asarray(g.PlanePositionSequence[0].ImagePositionPatient) @ np.cross(ROW, COLUMN)), 3)
        ]
        for g in groups
    ]
    wanted = [slice_of_frame.index(k) for k in order]
    converted.PerFrameFunctionalGroupsSequence = [groups[i] for i in wanted]
    converted.PixelData = np.ascontiguousarray(frames[wanted]).tobytes()
    if rescale is not None:
        transformation = pydicom.Dataset()
        transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = *rescale, "US"
        converted.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [transformation]
    converted.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def volume(tmp_path) -> tuple[list[Path], Path]:
    series = _write_series(tmp_path / "series")
    (tmp_path / "enhanced").mkdir()
    return series, _multiframe(series, tmp_path / "enhanced" / "mf.dcm")


def test_frames_are_sorted_along_the_normal_into_the_series_volume(volume):
    series, multiframe = volume
    expected = read_dicom_series(series)
    found = read_dicom_multiframe(multiframe)
    assert found.shape == expected.shape == (40, 36, SLICES)
    np.testing.assert_allclose(found.affine, expected.affine, atol=1e-9)
    # slice k (along the normal) is series slice k, stored as the frame that FRAME_ORDER put it in
    assert list(found.frames) == [FRAME_ORDER.index(k) + 1 for k in range(SLICES)]


def test_each_frame_loads_as_its_single_frame_slice_with_the_rescale_applied(volume):
    series, multiframe = volume
    loader = LoadScan()
    for k in range(SLICES):
        frame, single = loader.load_frame(multiframe, k), load_scan(read_dicom_series(series).paths[k])
        np.testing.assert_array_equal(frame.numpy(), 2 * single.numpy() - 100)  # the shared rescale
        np.testing.assert_allclose(np.asarray(frame.affine), np.asarray(single.affine), atol=1e-9)
    with pytest.raises(ValueError, match="no slice 6"):
        loader.load_frame(multiframe, SLICES)


def test_frames_that_are_not_a_volume_are_refused_naming_the_frames(volume, tmp_path):
    series, _ = volume
    duplicated = _multiframe(series, tmp_path / "duplicated.dcm", order=[0, 1, 2, 2, 4, 5])
    with pytest.raises(SeriesError, match=r"duplicate slice positions.*frame 3.*frame 4"):
        read_dicom_multiframe(duplicated)
    gap = _multiframe(series[:3] + series[4:], tmp_path / "gap.dcm", order=[0, 1, 2, 3, 4])
    with pytest.raises(SeriesError, match="uneven slice spacing"):
        read_dicom_multiframe(gap)
    plain = pydicom.dcmread(series[0])
    plain.NumberOfFrames = 2
    plain.PixelData = plain.PixelData * 2
    plain.save_as(tmp_path / "cine.dcm")
    with pytest.raises(SeriesError, match="0 Per-frame Functional Groups items") as refused:
        read_dicom_multiframe(tmp_path / "cine.dcm")
    assert "Multi" not in str(refused.value) and "MF-TEST" not in str(refused.value)
    assert "not a volume of slices" in instance_problem(pydicom.dcmread(tmp_path / "cine.dcm"))
    claimed = pydicom.dcmread(multiframe_path := volume[1], stop_before_pixels=True)
    claimed.NumberOfFrames = 5000
    with pytest.raises(SeriesError, match="5000 frames, more than the 4096"):
        read_dicom_multiframe(claimed, origin=multiframe_path)
    assert instance_problem(pydicom.dcmread(volume[1])) is None


def test_a_multiframe_input_is_one_volume_cut_into_its_frames(volume):
    _, multiframe = volume
    (item,) = collect_inputs([multiframe.parent])
    assert item["volume"] == DICOM_MULTIFRAME and item["stem"] == "mf"
    slices, problems = screen_inputs([item], LoadScand(keys="image"))
    assert not problems and [s["slice"] for s in slices] == list(range(SLICES))
    assert {s["image"] for s in slices} == {s["volume_source"] for s in slices} == {str(multiframe)}


def _explain(inputs: list[Path], out: Path, weights: dict, **settings):
    overrides = {**TINY_BUNDLE, **weights, "methods": ["medxgan_ig", "gradient"], "tracking_uri": None}
    overrides.update(slices="all", **settings)
    return run_inference({**overrides, "input": [str(p) for p in inputs], "output_dir": str(out)})


def test_a_multiframe_volume_is_explained_like_its_series_into_frames_that_reference_it(volume, weights, tmp_path):
    series, _ = volume
    multiframe = _multiframe(series, tmp_path / "mf.dcm", rescale=None)  # the values of the single-frame slices
    _explain([series[0].parent], tmp_path / "from_series", weights)
    report = _explain([multiframe], tmp_path / "from_multiframe", weights, dicom_volume_overlay=True)
    assert not report.problems
    import nibabel as nib

    for method in ("medxgan_ig", "gradient"):
        expected = nib.load(tmp_path / "from_series" / f"series_{method}.nii.gz")
        found = nib.load(tmp_path / "from_multiframe" / f"mf_{method}.nii.gz")
        np.testing.assert_array_equal(found.affine, expected.affine)
        # the same slices, in the same order and batches: the same maps
        np.testing.assert_array_equal(found.get_fdata(), expected.get_fdata())

    source = pydicom.dcmread(multiframe)
    positions = {
        k + 1: np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        for k, group in enumerate(source.PerFrameFunctionalGroupsSequence)
    }
    saliency = nib.load(tmp_path / "from_multiframe" / "mf_medxgan_ig.nii.gz").get_fdata()
    order = read_dicom_multiframe(multiframe).frames
    for name, sop_class in (("pm", PARAMETRIC_MAP_STORAGE), ("seg", SEGMENTATION_STORAGE)):
        written = pydicom.dcmread(tmp_path / "from_multiframe" / f"mf_medxgan_ig_{name}.dcm")
        assert written.SOPClassUID == sop_class and int(written.NumberOfFrames) == SLICES
        assert written.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert written.StudyInstanceUID == source.StudyInstanceUID
        pixels = written.pixel_array
        for index, group in enumerate(written.PerFrameFunctionalGroupsSequence):
            reference = group.DerivationImageSequence[0].SourceImageSequence[0]
            frame = int(reference.ReferencedFrameNumber)
            assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
            np.testing.assert_allclose(
                np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float), positions[frame]
            )
            expected_map = saliency[:, :, order.index(frame)].T  # MONAI's (columns, rows) to DICOM's (rows, columns)
            if name == "pm":
                np.testing.assert_allclose(pixels[index], expected_map, atol=1e-6)
            else:
                np.testing.assert_array_equal(pixels[index].astype(bool), expected_map >= 0.5)

    overlays = sorted((tmp_path / "from_multiframe").glob("mf_overlay_sc_*.dcm"))
    assert len(overlays) == SLICES
    captures = [pydicom.dcmread(path) for path in overlays]
    assert len({c.SeriesInstanceUID for c in captures}) == 1
    assert [int(c.InstanceNumber) for c in captures] == list(range(1, SLICES + 1))
    referenced = [int(c.SourceImageSequence[0].ReferencedFrameNumber) for c in captures]
    assert referenced == list(order), "overlay k shows slice k along the normal, i.e. frame order[k]"
    assert all(c.FrameOfReferenceUID == source.FrameOfReferenceUID for c in captures)
    if shutil.which("dciodvfy"):
        for path in [*overlays[:2], *(tmp_path / "from_multiframe").glob("mf_medxgan_ig_*.dcm")]:
            assert dciodvfy_errors(path) == [], path.name


def test_a_series_gets_its_overlay_series_only_on_request(volume, weights, tmp_path):
    series, _ = volume
    _explain([series[0].parent], tmp_path / "default", weights)
    assert not list((tmp_path / "default").glob("*_overlay_sc*.dcm"))
    _explain([series[0].parent], tmp_path / "requested", weights, dicom_volume_overlay=True)
    captures = [pydicom.dcmread(p) for p in sorted((tmp_path / "requested").glob("series_overlay_sc_*.dcm"))]
    sorted_series = read_dicom_series(series).paths
    expected = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sorted_series]
    assert [c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures] == expected
    assert len({c.SeriesInstanceUID for c in captures}) == 1
    assert all("ReferencedFrameNumber" not in c.SourceImageSequence[0] for c in captures)


class _Collector:
    def __init__(self) -> None:
        self.sent: list[pydicom.Dataset] = []

    def send(self, paths) -> None:
        self.sent += [pydicom.dcmread(path) for path in paths]


def test_the_node_explains_a_multiframe_instance_as_one_volume(volume, weights, tmp_path):
    _, multiframe = volume
    sink = _Collector()
    overrides = {**TINY_BUNDLE, **weights, "methods": ["medxgan"], "device": "cpu", "slices": "all"}
    processor = ExplanationProcessor(Spool(tmp_path / "spool"), sink, overrides, series_quiet_seconds=0)
    assert processor.accept(pydicom.dcmread(multiframe)) is None
    processor.process_pending()
    assert sorted(d.SOPClassUID for d in sink.sent) == [PARAMETRIC_MAP_STORAGE, SEGMENTATION_STORAGE]
    assert all(int(d.NumberOfFrames) == SLICES for d in sink.sent)
    assert processor.statistics.explained == 1 and processor.statistics.failed == 0


def test_an_evaluation_entry_may_be_a_multiframe_volume_with_a_mask_in_its_grid(volume, tmp_path):
    import json

    import nibabel as nib

    from medxgan_monai.data.inputs import collect_evaluation_items

    _, multiframe = volume
    grid = read_dicom_multiframe(multiframe)
    nib.save(nib.Nifti1Image(np.zeros(grid.shape, np.uint8), grid.affine), tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(grid.shape, np.uint8), np.eye(4)), tmp_path / "elsewhere.nii.gz")
    entries = [
        {"image": str(multiframe), "label": 1, "mask": str(tmp_path / mask)}
        for mask in ("mask.nii.gz", "elsewhere.nii.gz")
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"test": entries}))
    items, problems = collect_evaluation_items(tmp_path / "datalist.json")
    assert [item["volume"] for item in items] == [DICOM_MULTIFRAME]
    assert len(problems) == 1 and "not the volume's grid" in problems[0].problem


def test_a_3d_model_loads_a_series_and_its_multiframe_copy_whole_into_one_volume(volume):
    import json

    from medxgan_monai.io.nifti import SLICE_SOURCES
    from medxgan_monai.transforms import LoadScand

    series, multiframe = volume
    loader = LoadScand(keys="image", spatial_dims=3)
    folder = {"image": str(series[0].parent), "volume": "dicom_series", "files": [str(p) for p in series]}
    whole_series = loader(folder)
    whole_multiframe = loader({"image": str(multiframe), "volume": "dicom_multiframe"})
    assert "files" not in whole_series, "the file list is consumed: items of any slice count collate"
    expected = read_dicom_series(series)
    assert whole_series["image"].shape == (1, 40, 36, SLICES)
    np.testing.assert_allclose(np.asarray(whole_series["image"].affine), expected.affine, atol=1e-9)
    np.testing.assert_array_equal(whole_multiframe["image"].numpy(), 2 * whole_series["image"].numpy() - 100)
    np.testing.assert_allclose(np.asarray(whole_multiframe["image"].affine), expected.affine, atol=1e-9)
    assert json.loads(whole_series["image"].meta[SLICE_SOURCES]) == [str(p) for p in expected.paths]
    assert json.loads(whole_multiframe["image"].meta[SLICE_SOURCES]) == [str(multiframe)] * SLICES
    with pytest.raises(ValueError, match="only with its instances' files"):
        loader({"image": str(series[0].parent), "volume": "dicom_series"})
    # a volume's size limit, from the headers, before a slice is decoded
    small = LoadScand(keys="image", spatial_dims=3, max_decoded_bytes=40 * 36 * 4 * SLICES // 8 - 1)
    with pytest.raises(ValueError, match="volume of shape .* over the limit"):
        small(folder)
