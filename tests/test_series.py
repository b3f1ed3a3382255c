"""DICOM series folders: grouping by series, order along the slice normal, geometry checks with clear errors, and a
volume affine that agrees with the 2D loader on every slice."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medxgan_monai.io import (
    MRSliceGeometry,
    SeriesError,
    SyntheticPatient,
    group_dicom_series,
    read_dicom_series,
    write_mr_slice,
)

PATIENT_NAME, PATIENT_ID = "DOE^JANE", "PID-7731"
# an oblique plane: rotated 20 degrees about the patient's z axis, then tilted 15 degrees out of the axial plane
_YAW, _PITCH = np.deg2rad(20.0), np.deg2rad(15.0)
ROW_COSINES = np.array([np.cos(_YAW), np.sin(_YAW), 0.0])
COLUMN_COSINES = np.array([-np.sin(_YAW) * np.cos(_PITCH), np.cos(_YAW) * np.cos(_PITCH), np.sin(_PITCH)])
NORMAL = np.cross(ROW_COSINES, COLUMN_COSINES)
ROW_SPACING, COLUMN_SPACING = 0.8, 0.6  # PixelSpacing: between rows, between columns (mm)
SLICE_STEP = 2.5  # mm along the normal
FIRST_POSITION = np.array([10.0, -20.0, 5.0])
ROWS, COLUMNS = 5, 7
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def _patient(name: str = PATIENT_NAME, patient_id: str = PATIENT_ID) -> SyntheticPatient:
    return SyntheticPatient(patient_id=patient_id, patient_name=name)


def _pixels(k: int, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """Slice ``k``'s pixels: each value says its slice, row and column (100 k + 10 row + column)."""
    row, column = np.mgrid[:rows, :columns]
    return (100 * k + 10 * row + column).astype(np.uint16)


def _write_series(
    folder: Path,
    count: int = 6,
    *,
    patient: SyntheticPatient | None = None,
    tilt: tuple[float, float, float] = (0.0, 0.0, 0.0),
    seed: int = 0,
    name: Callable[[int], str] = "s{:02d}.dcm".format,
    geometry: Callable[[int, MRSliceGeometry], MRSliceGeometry] = lambda k, geometry: geometry,
    shape: Callable[[int], tuple[int, int]] = lambda k: (ROWS, COLUMNS),
) -> list[Path]:
    """Write an oblique, anisotropic series and return its files in true slice order (along the normal).

    File names and InstanceNumbers are shuffled, so that neither sorts the slices; ``tilt`` (LPS mm) is added to the
    position per slice (a gantry tilt); ``geometry`` and ``shape`` may change single slices.
    """
    folder.mkdir(parents=True, exist_ok=True)
    patient = patient or _patient()
    rng = np.random.default_rng(seed)
    file_numbers, instance_numbers = rng.permutation(count), rng.permutation(count) + 1
    paths = []
    for k in range(count):
        position = FIRST_POSITION + k * SLICE_STEP * NORMAL + k * np.asarray(tilt)
        nominal = MRSliceGeometry(
            image_position=tuple(position),
            image_orientation=(*ROW_COSINES, *COLUMN_COSINES),
            pixel_spacing=(ROW_SPACING, COLUMN_SPACING),
            slice_thickness=SLICE_STEP,
        )
        path = folder / name(int(file_numbers[k]))
        write_mr_slice(
            _pixels(k, *shape(k)), geometry(k, nominal), patient, path, instance_number=int(instance_numbers[k])
        )
        paths.append(path)
    return paths


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path)


def test_oblique_series_sorts_along_the_normal_not_by_file_name_or_instance_number(tmp_path):
    expected = _write_series(tmp_path / "series")
    by_name = sorted(expected)
    by_instance_number = sorted(expected, key=lambda path: int(pydicom.dcmread(path).InstanceNumber))
    assert by_name != expected and by_instance_number != expected  # neither order would do

    series = read_dicom_series(by_name[::-1])

    assert series.paths == tuple(expected)
    assert series.shape == (COLUMNS, ROWS, 6)
    assert series.series_uid == pydicom.dcmread(expected[0]).SeriesInstanceUID
    # columns of the affine: along a row at the column spacing, down the columns at the row spacing, then the step
    np.testing.assert_allclose(series.affine[:3, 0], RAS_FROM_LPS @ ROW_COSINES * COLUMN_SPACING, atol=1e-6)
    np.testing.assert_allclose(series.affine[:3, 1], RAS_FROM_LPS @ COLUMN_COSINES * ROW_SPACING, atol=1e-6)
    np.testing.assert_allclose(series.affine[:3, 2], RAS_FROM_LPS @ NORMAL * SLICE_STEP, atol=1e-5)
    np.testing.assert_allclose(series.affine[:3, 3], RAS_FROM_LPS @ FIRST_POSITION, atol=1e-6)
    np.testing.assert_array_equal(series.affine[3], [0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        series.affine[0, 0] = 1.0  # read-only, like the frozen dataclass around it


@pytest.mark.parametrize("tilt", [(0.0, 0.0, 0.0), (0.0, 0.9, -0.3)], ids=["no_tilt", "gantry_tilt"])
def test_volume_affine_agrees_with_every_slice_loaded_alone(tmp_path, tilt):
    from medxgan_monai.transforms import LoadScan

    expected = _write_series(tmp_path / "series", tilt=tilt)
    series = read_dicom_series(expected)
    step = NORMAL * SLICE_STEP + np.asarray(tilt)
    np.testing.assert_allclose(series.affine[:3, 2], RAS_FROM_LPS @ step, atol=1e-5)

    load = LoadScan(spatial_dims=2)
    i, j = np.meshgrid(np.arange(COLUMNS), np.arange(ROWS), indexing="ij")
    for k, path in enumerate(series.paths):
        image = load(path)
        # voxel (i, j, k) is pixel (column i, row j) of slice k, and both affines put it at the same place
        np.testing.assert_array_equal(image[0].numpy(), _pixels(k).T)
        pixel = np.stack([i.ravel(), j.ravel(), np.zeros(i.size), np.ones(i.size)])
        voxel = np.stack([i.ravel(), j.ravel(), np.full(i.size, k), np.ones(i.size)])
        np.testing.assert_allclose(series.affine @ voxel, image.meta["source_affine"] @ pixel, atol=1e-4)


def test_two_series_group_apart_and_everything_else_comes_back_untouched(tmp_path):
    folder = tmp_path / "study"
    first = _write_series(folder, 3, name="a{:02d}.dcm".format)
    second = _write_series(folder, 4, patient=_patient("ROE^JOHN", "PID-0002"), name="b{:02d}".format, seed=1)
    notes = folder / "notes.txt"
    notes.write_text("not an image\n")
    picture = folder / "picture.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(picture)
    # a multi-frame instance is no slice of a stack, even with a series UID
    multi_frame = folder / "multi_frame.dcm"
    dataset = pydicom.dcmread(first[0])
    dataset.SeriesInstanceUID = pydicom.uid.generate_uid()
    dataset.NumberOfFrames = 2
    dataset.PixelData = dataset.PixelData * 2
    dataset.save_as(multi_frame)
    subfolder = folder / "subfolder"
    subfolder.mkdir()
    unseen = [notes, picture, multi_frame, subfolder]
    contents = {path: path.read_bytes() for path in unseen if path.is_file()}

    given = [str(notes), *map(str, second), str(picture), *map(str, first[::-1]), str(multi_frame), str(subfolder)]
    groups, others = group_dicom_series(given)

    uid_first, uid_second = (pydicom.dcmread(paths[0]).SeriesInstanceUID for paths in (first, second))
    assert groups == {uid: sorted(paths) for uid, paths in sorted({uid_first: first, uid_second: second}.items())}
    assert list(groups) == sorted(groups)
    assert others == unseen  # in the order given
    assert all(path.read_bytes() == content for path, content in contents.items())
    # the same groups in the same order whatever the order of the files
    assert list(group_dicom_series(given[::-1])[0].items()) == list(groups.items())
    assert group_dicom_series(given[::-1])[1] == unseen[::-1]
    for paths in groups.values():
        read_dicom_series(paths)  # each group reads as one volume


def _missing(keyword: str):
    def change(dataset: pydicom.Dataset) -> None:
        delattr(dataset, keyword)

    return change


def _one_slice(k_changed: int, **changes) -> Callable[[int, MRSliceGeometry], MRSliceGeometry]:
    def geometry(k: int, nominal: MRSliceGeometry) -> MRSliceGeometry:
        return MRSliceGeometry(**{**nominal.__dict__, **changes}) if k == k_changed else nominal

    return geometry


def _single_slice(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder, 1)
    return paths, r"a single slice \(s00\.dcm\), not a volume: explain it as a 2D image"


def _missing_position(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder)
    _edit(paths[2], _missing("ImagePositionPatient"))
    return paths, rf"1 of 6 slices have no valid ImagePositionPatient .*: {paths[2].name}; a volume needs"


def _missing_orientation(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder)
    _edit(paths[4], _missing("ImageOrientationPatient"))
    return paths, rf"1 of 6 slices have no valid ImageOrientationPatient .*: {paths[4].name}; a volume needs"


def _mixed_orientations(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder, geometry=_one_slice(3, image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)))
    return paths, rf"mixed orientations: 1 of 6 slices \({paths[3].name}\) differ from {paths[0].name}'s"


def _different_sizes(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder, shape=lambda k: (ROWS + 1, COLUMNS) if k == 1 else (ROWS, COLUMNS))
    return paths, rf"different image sizes: 1 of 6 slices \({paths[1].name}\) are not 5 rows x 7 columns"


def _different_pixel_spacing(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder, geometry=_one_slice(5, pixel_spacing=(ROW_SPACING, 0.5)))
    return paths, rf"different PixelSpacing: 1 of 6 slices \({paths[5].name}\) differ .* \(0\.800, 0\.600\) mm"


def _duplicate_positions(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder)
    position = pydicom.dcmread(paths[2]).ImagePositionPatient
    _edit(paths[3], lambda dataset: setattr(dataset, "ImagePositionPatient", position))
    pair = "|".join(path.name for path in paths[2:4])
    return paths, rf"duplicate slice positions: 1 step\(s\) .*slice 2 \(({pair})\) to slice 3 \(({pair})\) at"


def _missing_slice(folder: Path) -> tuple[list[Path], str]:
    paths = _write_series(folder)
    paths[3].unlink()
    found = rf"slice 2 \({paths[2].name}\) to slice 3 \({paths[4].name}\): 5\.000 mm along the normal"
    return paths[:3] + paths[4:], rf"uneven slice spacing \(a missing slice\?\).*{found}, expected 2\.500 mm$"


def _changing_tilt(folder: Path) -> tuple[list[Path], str]:
    # the same spacing along the normal, but the last step shifts 1 mm along the rows: no constant step vector
    shifted = tuple(FIRST_POSITION + 5 * SLICE_STEP * NORMAL + ROW_COSINES)
    paths = _write_series(folder, geometry=_one_slice(5, image_position=shifted))
    return paths, rf"uneven slice spacing .*slice 4 \({paths[4].name}\) to slice 5 \({paths[5].name}\): step \("


def _two_series(folder: Path) -> tuple[list[Path], str]:
    # the same patient, a second series of the study
    paths = _write_series(folder, 3) + _write_series(folder, 3, name="t{:02d}.dcm".format, patient=_patient())
    return paths, r"files of 2 series \(3 file\(s\) like s0\d\.dcm, 3 file\(s\) like t0\d\.dcm\); read one series"


def _not_dicom(folder: Path) -> tuple[list[Path], str]:
    notes = folder / "notes.txt"
    paths = [*_write_series(folder, 3), notes]
    notes.write_text("not an image\n")
    return paths, r"1 file\(s\) not readable as DICOM: notes\.txt$"


BAD_SERIES = [
    _single_slice,
    _missing_position,
    _missing_orientation,
    _mixed_orientations,
    _different_sizes,
    _different_pixel_spacing,
    _duplicate_positions,
    _missing_slice,
    _changing_tilt,
    _two_series,
    _not_dicom,
]


@pytest.mark.parametrize("write", BAD_SERIES, ids=lambda write: write.__name__.strip("_"))
def test_each_bad_series_raises_a_series_error_naming_the_problem(tmp_path, write):
    folder = tmp_path / "bad"
    paths, problem = write(folder)

    with pytest.raises(SeriesError) as raised:
        read_dicom_series(paths)

    error = raised.value
    assert isinstance(error, ValueError)
    assert error.path == str(folder)  # the files' folder, by default
    assert str(error) == f"{folder}: {error.problem}"
    assert re.search(problem, error.problem), error.problem
    for identifying in (PATIENT_NAME, PATIENT_ID, "DOE", "JANE"):
        assert identifying not in str(error)


def test_messages_never_quote_the_patient_even_in_file_names(tmp_path):
    paths = _write_series(tmp_path / "series", name=f"{PATIENT_ID}_{{}}.dcm".format)
    paths[3].unlink()

    with pytest.raises(SeriesError) as raised:
        read_dicom_series(paths[:3] + paths[4:], origin="the folder given")

    assert raised.value.path == "the folder given"
    assert "5.000 mm along the normal, expected 2.500 mm" in raised.value.problem
    assert "<PatientID>_" in raised.value.problem  # the file is still named, its patient part redacted
    assert PATIENT_ID not in str(raised.value)
