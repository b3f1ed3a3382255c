"""Volumes explained slice by slice with the 2D model: 3D NIfTI and DICOM series in, one result per volume out
(maps stacked in the source geometry, per-slice and volume rows, one Parametric Map and one Segmentation per series)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import TINY_BUNDLE, brain_like, oblique_series
from PIL import Image

from medxgan_monai.bundle import run_inference
from medxgan_monai.data import collect_inputs

OBLIQUE = np.array([[0.0, -0.7, 0.1, 20.0], [1.3, 0.0, 0.0, -31.5], [0.0, 0.05, 3.0, 7.25], [0, 0, 0, 1]])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("volume") / "head.nii.gz"
    nib.save(nib.Nifti1Image(brain_like((40, 48, 6)), OBLIQUE), path)
    return path


def _explain(inputs, out: Path, weights: dict, **settings):
    overrides = {**TINY_BUNDLE, **weights, "methods": ["medxgan_ig", "gradient"], "tracking_uri": None, **settings}
    return run_inference({**overrides, "input": [str(p) for p in inputs], "output_dir": str(out)})


def test_inputs_name_their_volumes(volume, tmp_path):
    oblique_series(tmp_path / "series")
    (tmp_path / "series" / "notes.txt").write_text("not an image")
    items = collect_inputs([volume, tmp_path / "series"])
    assert [item.get("volume") for item in items] == ["nifti", "dicom_series"]
    assert len(items[1]["files"]) == 5 and items[1]["stem"] == "series"
    assert all(item.get("volume") is None for item in collect_inputs(tmp_path / "series", series=False))


def test_a_nifti_volume_is_explained_slice_by_slice_into_its_own_geometry(volume, weights, tmp_path):
    report = _explain([volume], tmp_path / "out", weights, slices="all")
    assert not report.problems
    source = nib.load(volume)
    for name in ("head_medxgan_ig.nii.gz", "head_gradient.nii.gz", "head_residual_counterfactual.nii.gz"):
        written = nib.load(tmp_path / "out" / name)
        assert written.shape == source.shape and np.array_equal(written.affine, source.affine), name
    maps = nib.load(tmp_path / "out" / "head_gradient.nii.gz").get_fdata()
    peaks = [maps[:, :, k].max() for k in range(6)]
    assert min(peaks) > 0, "every slice explained"
    # (below 1 in the source grid: the model-grid maps are interpolated back to it)
    assert max(peaks) <= 1 + 1e-6 and min(peaks) < 0.9 * max(peaks), "one scale across slices, not one per slice"
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert [row["slice"] for row in rows] == ["", *map(str, range(6))]
    with Image.open(tmp_path / "out" / "head_panel.png") as panel:
        assert panel.height == 3 * (32 * 3 + 28), "one row for each of the 3 most positive slices"
    assert float(rows[0]["probability"]) == pytest.approx(max(float(row["probability"]) for row in rows[1:]), abs=1e-6)


def test_only_the_chosen_slices_are_explained_and_the_slice_axis_can_be_chosen(volume, weights, tmp_path):
    sagittal = tmp_path / "sagittal.nii.gz"
    nib.save(nib.Nifti1Image(brain_like((5, 40, 36)), OBLIQUE), sagittal)
    report = _explain([sagittal], tmp_path / "out", weights, slices="1-2", slice_axis=0)
    assert not report.problems
    maps = nib.load(tmp_path / "out" / "sagittal_gradient.nii.gz").get_fdata()
    assert maps.shape == (5, 40, 36)
    explained = [k for k in range(5) if maps[k].max() > 0]
    assert explained == [1, 2], "slices 1 and 2 along axis 0, no other"
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 6
    report = _explain([volume], tmp_path / "thin", weights, slice_axis=0)
    assert "below 8 pixels" in report.problems[0].problem, "slices of 48 x 6 pixels are refused, naming the size"
    assert {row["seconds_gradient"] for row in rows[1:] if row["slice"] not in ("1", "2")} == {"0.0000"}


def test_a_dicom_series_folder_becomes_one_volume_with_one_parametric_map_and_one_segmentation(weights, tmp_path):
    import highdicom as hd

    from medxgan_monai.io.series import read_dicom_series

    paths = oblique_series(tmp_path / "series")
    report = _explain([tmp_path / "series"], tmp_path / "out", weights, slices="all")
    assert not report.problems
    expected = read_dicom_series(paths)
    written = nib.load(tmp_path / "out" / "series_medxgan_ig.nii.gz")
    assert written.shape == expected.shape
    np.testing.assert_allclose(written.affine, expected.affine, atol=1e-4)
    dicom = sorted(p.name for p in (tmp_path / "out").glob("*.dcm"))
    assert dicom == ["series_medxgan_ig_pm.dcm", "series_medxgan_ig_seg.dcm"], "one object per kind per series"
    parametric_map = pydicom.dcmread(tmp_path / "out" / "series_medxgan_ig_pm.dcm")
    assert int(parametric_map.NumberOfFrames) == 5
    assert parametric_map.StudyInstanceUID == pydicom.dcmread(paths[0]).StudyInstanceUID
    sources = [pydicom.dcmread(p).SOPInstanceUID for p in expected.paths]
    referenced = [
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in parametric_map.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(referenced) == sorted(sources), "one frame per source instance"
    maps = written.get_fdata()
    for frame, uid in enumerate(referenced):
        # each frame holds its source slice's map (highdicom orders the frames by position itself)
        expected_frame = maps[:, :, sources.index(uid)].T
        np.testing.assert_allclose(parametric_map.pixel_array[frame], expected_frame, atol=1e-5)
    segmentation = hd.seg.segread(tmp_path / "out" / "series_medxgan_ig_seg.dcm")
    assert segmentation.SeriesInstanceUID != parametric_map.SeriesInstanceUID


def test_a_broken_series_is_reported_and_the_rest_is_explained(volume, weights, tmp_path):
    oblique_series(tmp_path / "gap", skip=2)
    report = _explain([tmp_path / "gap", volume], tmp_path / "out", weights, slices="all")
    (problem,) = report.problems
    assert problem.stem == "gap" and "VOLUME" not in problem.problem and "VOL-TEST" not in problem.problem
    assert (tmp_path / "out" / "head_gradient.nii.gz").exists()
    assert not list((tmp_path / "out").glob("gap_*"))


def test_a_finished_volume_is_not_explained_again_and_keeps_its_slice_rows(volume, weights, tmp_path):
    _explain([volume], tmp_path / "out", weights, slices="all")
    first = _rows(tmp_path / "out" / "predictions.csv")
    report = _explain([volume], tmp_path / "out", weights, slices="all")
    assert not report.predictions and len(report.completed) == 1
    assert _rows(tmp_path / "out" / "predictions.csv") == first
