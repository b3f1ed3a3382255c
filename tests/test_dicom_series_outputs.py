"""DICOM outputs of a source series explained slice by slice: one multi-frame Parametric Map and one DICOM SEG per
source series, each frame referencing its source instance; and dciodvfy-clean derived objects (no Error lines)."""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import dciodvfy_errors
from pydicom.dataelem import RawDataElement
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from medxgan_monai import __version__
from medxgan_monai.io import (
    MRSliceGeometry,
    SyntheticPatient,
    write_mr_slice,
    write_overlay_secondary_capture,
    write_saliency_parametric_map,
    write_series_parametric_map,
    write_series_segmentation,
)
from medxgan_monai.io.dicom_derived import DerivedDicomError

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
ROWS, COLUMNS, SLICES = 12, 10, 5
#: oblique: rows turned 30 degrees in the axial plane, columns tilted 20 degrees out of it
ROW = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])
_TILTED = np.array([-np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0]) * np.cos(np.pi / 9) + [0, 0, -np.sin(np.pi / 9)]
COLUMN = _TILTED / np.linalg.norm(_TILTED)
PIXEL_SPACING = (0.7, 1.3)  # anisotropic: (between rows, between columns)
SLICE_STEP = 2.5  # mm between slices, thicker than a pixel
PATIENT = dict(patient_id="ID-98765-Q", patient_name="Zyxwvut^Qqqq")


def _write_series(folder: Path, patient: SyntheticPatient, count: int = SLICES) -> list[pydicom.Dataset]:
    """``count`` MR slices of one series. Slice ``k`` lies at ``k`` steps along column x row, the order in which
    highdicom stores the frames of a derived object, so file frame ``k`` derives from slice ``k``."""
    folder.mkdir(parents=True, exist_ok=True)
    step = np.cross(COLUMN, ROW) * SLICE_STEP
    paths = []
    for k in range(count):
        geometry = MRSliceGeometry(
            image_position=tuple(np.array([-12.0, 30.5, 41.0]) + k * step),
            image_orientation=(*ROW, *COLUMN),
            pixel_spacing=PIXEL_SPACING,
            slice_thickness=2.0,
        )
        pixels = np.full((ROWS, COLUMNS), 100 * (k + 1), np.uint16)
        paths.append(folder / f"slice{k}.dcm")
        write_mr_slice(pixels, geometry, patient, paths[-1], instance_number=k + 1)
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


@pytest.fixture
def series(tmp_path) -> list[pydicom.Dataset]:
    return _write_series(tmp_path / "source", SyntheticPatient(**PATIENT))


def _maps(seed: int = 0) -> np.ndarray:
    """Saliency in [0, 1] with values that float32 cannot hold exactly, and an all-zero slice (index 2)."""
    maps = np.random.default_rng(seed).random((SLICES, ROWS, COLUMNS))
    maps[2] = 0.0
    maps[0, 0, 0], maps[1, 0, 0] = 1.0, 0.0  # the ends of the range
    return maps


def _frame_sources(written: pydicom.Dataset) -> list[str]:
    """The SOPInstanceUID each frame says it is derived from, in file order."""
    return [
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in written.PerFrameFunctionalGroupsSequence
    ]


def _frame_positions(written: pydicom.Dataset) -> np.ndarray:
    return np.array(
        [
            [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
            for f in written.PerFrameFunctionalGroupsSequence
        ]
    )


def _positions(sources) -> np.ndarray:
    return np.array([[float(v) for v in source.ImagePositionPatient] for source in sources])


# --- the series Parametric Map --------------------------------------------------------------------------------------


def test_series_parametric_map_has_one_frame_per_slice_referencing_its_source(tmp_path, series):
    maps = _maps()
    uid = write_series_parametric_map(series, maps, tmp_path / "pm.dcm")
    written = pydicom.dcmread(tmp_path / "pm.dcm")

    assert written.SOPClassUID == PARAMETRIC_MAP_STORAGE and written.SOPInstanceUID == uid
    assert int(written.NumberOfFrames) == SLICES
    assert _frame_sources(written) == [source.SOPInstanceUID for source in series]
    assert [ref.ReferencedSOPInstanceUID for ref in written.SourceImageSequence] == [s.SOPInstanceUID for s in series]
    # same study and frame of reference, a new series
    assert written.StudyInstanceUID == series[0].StudyInstanceUID
    assert written.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    assert written.SeriesInstanceUID != series[0].SeriesInstanceUID and int(written.SeriesNumber) == 9002
    # the geometry of each slice: position per frame; orientation and anisotropic spacing shared
    np.testing.assert_allclose(_frame_positions(written), _positions(series), atol=1e-5)
    shared = written.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient], [*ROW, *COLUMN], atol=1e-5
    )
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == list(PIXEL_SPACING)
    # float pixels round-trip exactly as float32 (the stored type), within float32 precision of the float64 maps
    assert "FloatPixelData" in written
    np.testing.assert_array_equal(written.pixel_array, maps.astype(np.float32))
    np.testing.assert_allclose(written.pixel_array, maps, rtol=0, atol=np.finfo(np.float32).eps)
    # the same real-world value mapping, window and label as the single-frame map
    mapping = shared.RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "SALIENCY" and mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert (mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped) == (
        0,
        1,
    )
    voi = shared.FrameVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (0.5, 1.0)
    assert written.ContentLabel == "SALIENCY" and "nominal" not in written.ContentDescription
    # highdicom reads it back, frame by frame from its source
    parametric_map = hd.pm.ParametricMap.from_dataset(written)
    assert parametric_map.SOPInstanceUID == uid


def test_single_frame_map_is_the_series_map_of_one_slice(tmp_path, series):
    """The single-instance writer shares the series writer: same mapping, geometry and reference."""
    saliency = _maps()[3]
    write_saliency_parametric_map(series[3], saliency, tmp_path / "single.dcm")
    write_series_parametric_map(series[3:4], saliency[np.newaxis], tmp_path / "series.dcm")
    single, one = pydicom.dcmread(tmp_path / "single.dcm"), pydicom.dcmread(tmp_path / "series.dcm")
    assert int(single.NumberOfFrames) == 1 and _frame_sources(single) == [series[3].SOPInstanceUID]
    np.testing.assert_array_equal(single.pixel_array, saliency.astype(np.float32))
    for keyword in ("RealWorldValueMappingSequence", "PixelMeasuresSequence", "PlaneOrientationSequence"):
        assert single.SharedFunctionalGroupsSequence[0][keyword] == one.SharedFunctionalGroupsSequence[0][keyword]
    np.testing.assert_allclose(_frame_positions(single), _positions(series[3:4]), atol=1e-5)


def test_slices_given_in_the_other_order_keep_each_map_with_its_source(tmp_path, series):
    """highdicom stores frames in its own order along the normal; every frame still carries the map, the position
    and the reference of the same source."""
    maps = _maps(seed=1)
    reversed_sources, reversed_maps = series[::-1], maps[::-1]
    write_series_parametric_map(reversed_sources, reversed_maps, tmp_path / "pm.dcm")
    write_series_segmentation(reversed_sources, reversed_maps, tmp_path / "seg.dcm", threshold=0.5)
    index = {source.SOPInstanceUID: k for k, source in enumerate(series)}
    for name in ("pm.dcm", "seg.dcm"):
        written = pydicom.dcmread(tmp_path / name)
        order = [index[uid] for uid in _frame_sources(written)]
        assert sorted(order) == list(range(SLICES))
        expected = maps[order].astype(np.float32) if name == "pm.dcm" else maps[order].astype(np.float32) >= 0.5
        np.testing.assert_array_equal(written.pixel_array, expected.astype(written.pixel_array.dtype))
        np.testing.assert_allclose(_frame_positions(written), _positions(series)[order], atol=1e-5)


# --- the series SEG ---------------------------------------------------------------------------------------------------


def test_series_segmentation_is_the_map_above_the_threshold_per_source_slice(tmp_path, series):
    maps, threshold = _maps().astype(np.float32), 0.35
    uid = write_series_segmentation(series, maps, tmp_path / "seg.dcm", threshold=threshold)
    written = pydicom.dcmread(tmp_path / "seg.dcm")

    assert written.SOPClassUID == SEGMENTATION_STORAGE and written.SOPInstanceUID == uid
    assert written.SegmentationType == "BINARY" and int(written.SeriesNumber) == 9003
    assert written.StudyInstanceUID == series[0].StudyInstanceUID
    assert written.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    # every frame kept, the empty slice 2 included, each referencing its source, in order
    assert int(written.NumberOfFrames) == SLICES
    assert _frame_sources(written) == [source.SOPInstanceUID for source in series]
    np.testing.assert_allclose(_frame_positions(written), _positions(series), atol=1e-5)
    np.testing.assert_array_equal(written.pixel_array.astype(bool), maps >= threshold)
    assert not written.pixel_array[2].any()
    # highdicom reads the mask back by source instance
    segmentation = hd.seg.segread(tmp_path / "seg.dcm")
    by_source = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID for source in series[::-1]], segment_numbers=[1]
    )
    np.testing.assert_array_equal(by_source[..., 0].astype(bool), (maps >= threshold)[::-1])
    # one segment that says what it is
    segment = written.SegmentSequence[0]
    assert segment.SegmentLabel == "medXGAN saliency above threshold"
    assert "0.35" in segment.SegmentDescription and "NOT FOR CLINICAL USE" in segment.SegmentDescription
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category, kind = segment.SegmentedPropertyCategoryCodeSequence[0], segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == (
        codes.SCT.MorphologicallyAbnormalStructure.value,
        "SCT",
    )
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == (codes.SCT.Lesion.value, "SCT")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medxgan-monai", __version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.ArtificialIntelligence.value
    assert algorithm.AlgorithmParameters == "threshold=0.35"


def test_segmentation_where_no_pixel_passes_the_threshold_is_a_valid_empty_object(tmp_path, series):
    maps = np.full((SLICES, ROWS, COLUMNS), 0.2)
    write_series_segmentation(series, maps, tmp_path / "seg.dcm", threshold=0.5)
    written = pydicom.dcmread(tmp_path / "seg.dcm")
    assert int(written.NumberOfFrames) == SLICES and not written.pixel_array.any()
    assert _frame_sources(written) == [source.SOPInstanceUID for source in series]
    assert hd.seg.segread(tmp_path / "seg.dcm").get_segment_numbers() == [1]
    if shutil.which("dciodvfy"):
        assert not dciodvfy_errors(tmp_path / "seg.dcm")


# --- dciodvfy ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_derived_objects_have_no_dciodvfy_errors(tmp_path, series):
    maps = _maps()
    outputs = {
        "sc.dcm": lambda path: write_overlay_secondary_capture(series[0], np.zeros((ROWS, COLUMNS, 3), np.uint8), path),
        "pm.dcm": lambda path: write_saliency_parametric_map(series[0], maps[0], path),
        "series_pm.dcm": lambda path: write_series_parametric_map(series, maps, path),
        "seg.dcm": lambda path: write_series_segmentation(series, maps, path),
    }
    for name, write in outputs.items():
        write(tmp_path / name)
        assert not dciodvfy_errors(tmp_path / name), name
        written = pydicom.dcmread(tmp_path / name)
        # Laterality: present (empty: unknown) where the General Series needs it, absent beside a Segment Sequence
        if name == "seg.dcm":
            assert "Laterality" not in written
        else:
            assert "Laterality" in written and written.Laterality == ""


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_the_synthetic_mr_slices_have_no_dciodvfy_errors(tmp_path):
    _write_series(tmp_path / "source", SyntheticPatient(**PATIENT), count=1)
    assert not dciodvfy_errors(tmp_path / "source" / "slice0.dcm")


def test_a_stated_laterality_is_carried_over(tmp_path, series):
    for source in series:
        source.Laterality = "L"
    write_series_parametric_map(series, _maps(), tmp_path / "pm.dcm")
    assert pydicom.dcmread(tmp_path / "pm.dcm").Laterality == "L"
    series[1].Laterality = "R"  # the slices disagree: unknown
    write_series_parametric_map(series, _maps(), tmp_path / "pm2.dcm")
    assert pydicom.dcmread(tmp_path / "pm2.dcm").Laterality == ""


# --- invalid inputs ---------------------------------------------------------------------------------------------------


def _other_series_slice(tmp_path, series) -> pydicom.Dataset:
    patient = SyntheticPatient(**PATIENT, study_instance_uid=series[0].StudyInstanceUID)  # same study, new series
    return _write_series(tmp_path / "other", patient, count=1)[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("one frame short", r"maps must be real numbers of shape \(5, 12, 10\) \(one frame per source\)"),
        ("rows and columns swapped", r"maps must be real numbers of shape \(5, 12, 10\)"),
        ("two series", "the sources come from 2 different series"),
        ("slice listed twice", "the sources list an instance more than once"),
        ("values above 1", r"maps must be finite values in \[0, 1\]"),
        ("not a number", r"maps must be finite values in \[0, 1\]"),
        ("one dataset, not a list", "sources must be a non-empty sequence"),
        ("no position", r"source 3 has no valid plane geometry \(ImagePositionPatient/ImageOrientationPatient"),
    ],
)
@pytest.mark.parametrize("writer", [write_series_parametric_map, write_series_segmentation])
def test_invalid_series_input_is_refused_naming_the_file_and_the_problem(tmp_path, series, writer, case, expected):
    sources, maps = list(series), _maps()
    if case == "one frame short":
        maps = maps[:-1]
    elif case == "rows and columns swapped":
        maps = maps.transpose(0, 2, 1)
    elif case == "two series":
        sources[-1] = _other_series_slice(tmp_path, series)
    elif case == "slice listed twice":
        sources[-1] = sources[0]
    elif case == "values above 1":
        maps = maps * 2
    elif case == "not a number":
        maps[1, 2, 3] = np.nan
    elif case == "one dataset, not a list":
        sources = series[0]
    elif case == "no position":
        del sources[3].ImagePositionPatient
    path = tmp_path / "out.dcm"
    with pytest.raises(DerivedDicomError, match=expected) as error:
        writer(sources, maps, path)
    assert str(path) in str(error.value)
    assert "Zyxwvut" not in str(error.value) and "ID-98765-Q" not in str(error.value)
    assert not path.exists()


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5, float("nan")])
def test_segmentation_threshold_outside_the_unit_interval_is_refused(tmp_path, series, threshold):
    with pytest.raises(DerivedDicomError, match=r"threshold must be a number in \(0, 1\]"):
        write_series_segmentation(series, _maps(), tmp_path / "seg.dcm", threshold=threshold)


def test_single_frame_map_of_the_wrong_shape_is_refused(tmp_path, series):
    with pytest.raises(DerivedDicomError, match=r"saliency must have shape \(12, 10\), got \(10, 12\)"):
        write_saliency_parametric_map(series[0], np.zeros((COLUMNS, ROWS)), tmp_path / "pm.dcm")


# --- tolerant copy and redaction over every slice ------------------------------------------------------------------


def test_an_invalid_value_in_a_later_slice_is_blanked_and_never_quoted(tmp_path, series, caplog, recwarn):
    """Each slice's header is copied tolerantly: an invalid birth date in slice 3 only does not fail the series."""
    path = tmp_path / "source" / "slice3.dcm"
    odd = pydicom.dcmread(path)
    odd[0x00100030] = RawDataElement(Tag(0x00100030), "DA", 10, b"03.02.1901", 0, False, True)  # PatientBirthDate
    odd.save_as(path)
    series[3] = pydicom.dcmread(path, stop_before_pixels=True)
    caplog.set_level(logging.DEBUG)
    write_series_parametric_map(series, _maps(), tmp_path / "pm.dcm")
    write_series_segmentation(series, _maps(), tmp_path / "seg.dcm")

    assert int(pydicom.dcmread(tmp_path / "pm.dcm").NumberOfFrames) == SLICES
    assert int(pydicom.dcmread(tmp_path / "seg.dcm").NumberOfFrames) == SLICES
    messages = [record.getMessage() for record in caplog.records] + [str(warning.message) for warning in recwarn]
    assert any("PatientBirthDate" in message for message in messages)  # the problem is named by keyword
    assert not any("03.02.1901" in message for message in messages)


@pytest.mark.parametrize("writer", ["ParametricMap", "Segmentation"])
def test_a_library_error_quoting_a_later_slice_value_is_redacted(tmp_path, series, monkeypatch, writer):
    """Messages are redacted with every slice's values, not only the first slice's: the content date below is only
    in slice 3, and the error quotes it as highdicom and pydicom quote offending values."""
    same_series = SyntheticPatient(
        **PATIENT, study_instance_uid=series[0].StudyInstanceUID, series_instance_uid=series[0].SeriesInstanceUID
    )
    geometry = MRSliceGeometry(tuple(float(v) for v in series[3].ImagePositionPatient), (*ROW, *COLUMN), PIXEL_SPACING)
    write_mr_slice(
        np.zeros((ROWS, COLUMNS), np.uint16),
        geometry,
        same_series,
        tmp_path / "dated.dcm",
        sop_instance_uid=series[3].SOPInstanceUID,
        content_datetime=datetime.datetime(1987, 6, 5, 4, 3, 2),
    )
    series[3] = pydicom.dcmread(tmp_path / "dated.dcm", stop_before_pixels=True)
    assert series[3].ContentDate == "19870605" and all(source.ContentDate != "19870605" for source in series[:3])

    def failing_constructor(*args, source_images, **kwargs):
        raise ValueError(f"Unable to use ContentDate '{source_images[3].ContentDate}'")

    monkeypatch.setattr(
        getattr(hd.pm if writer == "ParametricMap" else hd.seg, writer), "__init__", failing_constructor
    )
    write = write_series_parametric_map if writer == "ParametricMap" else write_series_segmentation
    with pytest.raises(DerivedDicomError) as error:
        write(series, _maps(), tmp_path / "out.dcm")
    assert str(error.value).endswith("Unable to use ContentDate '<ContentDate>'")
    assert "19870605" not in str(error.value) and error.value.__context__ is None
    assert not (tmp_path / "out.dcm").exists()


def test_a_series_without_frame_of_reference_gets_one_shared_by_its_map_and_segmentation(tmp_path, series):
    for source in series:
        del source.FrameOfReferenceUID
    write_series_parametric_map(series, _maps(), tmp_path / "pm.dcm")
    write_series_segmentation(series, _maps(), tmp_path / "seg.dcm")
    parametric_map, segmentation = pydicom.dcmread(tmp_path / "pm.dcm"), pydicom.dcmread(tmp_path / "seg.dcm")
    assert parametric_map.FrameOfReferenceUID == segmentation.FrameOfReferenceUID
    assert parametric_map.FrameOfReferenceUID not in {source.SOPInstanceUID for source in series}
    assert _frame_sources(segmentation) == [source.SOPInstanceUID for source in series]
