"""The demo volumes: determinism, exact 3D masks, anatomy continuous across slices, the DICOM series lining up with the
NIfTI volume and its mask, the datalist read as the product reads it, and the command line option; the native-3D
benchmark (``--anatomy mni152_3d``): its splits and streams, exact masks, datalist, manifest and command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medxgan_monai.cli.make_demo_data import _parser, _settings
from medxgan_monai.cli.make_demo_data import main as make_demo_data
from medxgan_monai.data import (
    BENCHMARK_3D,
    DemoDataSettings,
    DemoVolumeSettings,
    build_demo_volumes,
    collect_inputs,
    load_datalist,
    render_volume,
)
from medxgan_monai.data.volumes import DICOM_SERIES, NIFTI_VOLUME
from medxgan_monai.io import group_dicom_series, read_dicom_series

SIZE, SLICES = 32, 6
TINY = DemoVolumeSettings(n_volumes=4, slices=SLICES, demo=DemoDataSettings(size=SIZE, seed=7))
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
#: the native-3D benchmark at its real 32^3 grid, with a few volumes per split
TINY_3D = replace(BENCHMARK_3D, dicom_volumes=2, demo=replace(BENCHMARK_3D.demo, seed=7, n_train=3, n_val=2, n_test=2))
SPLITS_3D = ("training", "validation", "test")


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_volumes") / "volumes"
    build_demo_volumes(out, TINY)
    return out


@pytest.fixture(scope="module")
def benchmark_3d(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo3d") / "demo3d"
    build_demo_volumes(out, TINY_3D)
    return out


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _affine(path: Path) -> np.ndarray:
    return nib.load(path).affine


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _datalist(volumes: Path) -> dict:
    return json.loads((volumes / "datalist.json").read_text())


def test_same_seed_gives_identical_volumes_and_another_seed_does_not(volumes, tmp_path):
    again = tmp_path / "again"
    build_demo_volumes(again, TINY)
    other = tmp_path / "other"
    build_demo_volumes(other, DemoVolumeSettings(n_volumes=4, slices=SLICES, demo=DemoDataSettings(size=SIZE, seed=8)))
    first = _datalist(volumes)
    assert _datalist(again) == first
    for item in first["test"] + first["test_dicom"]:
        np.testing.assert_array_equal(_array(volumes / item["mask"]), _array(again / item["mask"]))
    for item in first["test"]:
        np.testing.assert_array_equal(_array(volumes / item["image"]), _array(again / item["image"]))
        np.testing.assert_array_equal(_affine(volumes / item["image"]), _affine(again / item["image"]))
        assert not np.array_equal(_array(volumes / item["image"]), _array(other / item["image"]))
    for item in first["test_dicom"]:
        files, repeated = _dicom_files(volumes / item["image"]), _dicom_files(again / item["image"])
        assert [f.name for f in files] == [f.name for f in repeated]
        for file, twin in zip(files, repeated, strict=True):
            a, b = pydicom.dcmread(file), pydicom.dcmread(twin)
            assert a.SOPInstanceUID == b.SOPInstanceUID
            np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    manifest = json.loads((volumes / "manifest.json").read_text())
    assert json.loads((again / "manifest.json").read_text())["lesions"] == manifest["lesions"]


def test_masks_are_exactly_where_lesions_changed_the_volume(volumes):
    items = load_datalist(volumes / "datalist.json", "test")
    assert sorted(item["label"] for item in items) == [0, 0, 1, 1]
    manifest = json.loads((volumes / "manifest.json").read_text())
    for index, item in enumerate(items):
        image, mask = _array(Path(item["image"])), _array(Path(item["mask"]))
        assert image.shape == mask.shape == (SIZE, SIZE, SLICES)
        assert image.dtype == np.int16 and mask.dtype == np.uint8
        np.testing.assert_array_equal(_affine(Path(item["mask"])), _affine(Path(item["image"])))
        # the same volume rendered without lesions: same anatomy and acquisition, so it differs only at the mask
        lesion_free = render_volume(TINY, index, positive=False)
        np.testing.assert_array_equal(lesion_free["mask"], 0)
        changed = image != lesion_free["image"]
        np.testing.assert_array_equal(changed, mask.astype(bool))
        if item["label"] == 1:
            slices_with_lesion = np.flatnonzero(mask.any(axis=(0, 1)))
            assert len(slices_with_lesion) >= 2, item["image"]
            records = manifest["lesions"][Path(item["image"]).name.removesuffix(".nii.gz")]
            assert 1 <= len(records) <= TINY.max_lesions
            assert sum(record["voxels"] for record in records) == int(mask.sum())
            for record in records:
                low, high = record["slices"]
                assert high - low + 1 >= 2 and 0 <= low <= high < SLICES
        else:
            assert not mask.any()
            np.testing.assert_array_equal(image, lesion_free["image"])


def test_volume_geometry_is_the_2d_demos_in_plane_and_a_slab_of_its_z_range(volumes):
    demo = TINY.demo
    spacing = demo.field_of_view_mm / SIZE
    for item in load_datalist(volumes / "datalist.json", "test"):
        affine = _affine(Path(item["image"]))
        np.testing.assert_allclose(affine[:3, :3], np.diag([-spacing, -spacing, TINY.slice_step_mm]), atol=1e-4)
        first_z, last_z = affine[2, 3], affine[2, 3] + (SLICES - 1) * TINY.slice_step_mm
        assert demo.z_range_mm[0] - 1e-4 <= first_z < last_z <= demo.z_range_mm[1] + 1e-4
        image = _array(Path(item["image"]))
        # the 2D demo's stored scale: the anatomy's 99.5th brain percentile is stored near 1000, never above 4095
        assert 0 <= image.min() and image.max() <= 4095
        assert 500 < np.percentile(image, 99) < 2000


def test_anatomy_is_continuous_across_slices(volumes):
    """One re-slicing per volume: neighbouring slices are nearly the same anatomy, unlike slices of other volumes."""
    images = [
        _array(Path(item["image"])).astype(np.float64) for item in load_datalist(volumes / "datalist.json", "test")
    ]

    def correlation(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    neighbours = [correlation(v[:, :, k], v[:, :, k + 1]) for v in images for k in range(SLICES - 1)]
    strangers = [
        correlation(images[a][:, :, k], images[b][:, :, k])
        for a in range(len(images))
        for b in range(a + 1, len(images))
        for k in range(SLICES)
    ]
    assert min(neighbours) > 0.93
    assert max(strangers) < min(neighbours)


def test_dicom_series_and_its_mask_line_up_with_the_nifti_volume(volumes):
    datalist = _datalist(volumes)
    scrambled = 0
    for nifti_item, dicom_item in zip(datalist["test"], datalist["test_dicom"], strict=True):
        folder = volumes / dicom_item["image"]
        groups, others = group_dicom_series(_dicom_files(folder))
        assert len(groups) == 1 and not others
        series = read_dicom_series(next(iter(groups.values())))
        assert series.shape == (SIZE, SIZE, SLICES)
        scrambled += [p.name for p in series.paths] != sorted(p.name for p in series.paths)

        image, nifti_affine = _array(volumes / nifti_item["image"]), _affine(volumes / nifti_item["image"])
        nifti_mask = _array(volumes / nifti_item["mask"])
        dicom_mask_path = volumes / dicom_item["mask"]
        dicom_mask = _array(dicom_mask_path)
        assert dicom_mask.shape == series.shape
        # NIfTI stores affines in float32
        np.testing.assert_allclose(_affine(dicom_mask_path), series.affine, atol=1e-4)
        np.testing.assert_allclose(series.affine, nifti_affine, atol=1e-4)
        headers = [pydicom.dcmread(path) for path in series.paths]
        for k, header in enumerate(headers):
            # the DICOM pixel order is [row, column]; the volume's is (column, row)
            np.testing.assert_array_equal(header.pixel_array.T, image[:, :, k])
        np.testing.assert_array_equal(dicom_mask, nifti_mask)

        # every lesion voxel of the DICOM-grid mask is, at the world point its slice header gives, a lesion voxel of
        # the NIfTI mask holding the same stored value
        for i, j, k in np.argwhere(dicom_mask)[:: max(1, int(dicom_mask.sum()) // 25)]:
            header = headers[k]
            row_cosines = np.asarray(header.ImageOrientationPatient[:3], dtype=float)
            column_cosines = np.asarray(header.ImageOrientationPatient[3:], dtype=float)
            row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
            lps = np.asarray(header.ImagePositionPatient, dtype=float)
            lps = lps + i * column_spacing * row_cosines + j * row_spacing * column_cosines
            world = RAS_FROM_LPS @ lps
            np.testing.assert_allclose((series.affine @ (i, j, k, 1))[:3], world, atol=1e-3)
            voxel = np.linalg.solve(nifti_affine, np.append(world, 1.0))[:3]
            np.testing.assert_allclose(voxel, np.round(voxel), atol=1e-3)
            vi, vj, vk = np.round(voxel).astype(int)
            assert nifti_mask[vi, vj, vk] == 1
            assert image[vi, vj, vk] == header.pixel_array[j, i]
        assert bool(dicom_mask.any()) == bool(dicom_item["label"])
    # file names do not follow the slice order: readers must sort along the normal
    assert scrambled >= 1


def test_datalist_entries_resolve_to_volumes_as_the_product_reads_them(volumes):
    datalist = volumes / "datalist.json"
    nifti = collect_inputs(datalist, section="test")
    assert [item["volume"] for item in nifti] == [NIFTI_VOLUME] * TINY.n_volumes
    series = collect_inputs(datalist, section="test_dicom")
    assert [item["volume"] for item in series] == [DICOM_SERIES] * TINY.n_volumes
    assert all(len(item["files"]) == SLICES for item in series)
    for section in ("test", "test_dicom"):
        for item in load_datalist(datalist, section, require_mask=True):
            assert Path(item["image"]).exists() and Path(item["mask"]).is_file()
            assert Path(item["image"]).parent == volumes.resolve()


def test_command_line_writes_volumes_beside_the_2d_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    status = make_demo_data(
        [str(out), "--size", str(SIZE), "--seed", "7", "--n-train", "2", "--n-val", "2", "--n-test", "2"]
        + ["--volumes", "2", "--volume-slices", "3"]
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out)["volumes"]["counts"] == {"total": 2, "positive": 1}
    assert (out / "datalist.json").is_file() and (out / "images").is_dir()
    datalist = _datalist(out / "volumes")
    assert [item["label"] for item in datalist["test"]] in ([0, 1], [1, 0])
    for item in datalist["test"]:
        assert _array(out / "volumes" / item["image"]).shape == (SIZE, SIZE, 3)
    for item in datalist["test_dicom"]:
        assert len(_dicom_files(out / "volumes" / item["image"])) == 3
    # nothing but the finished folder is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    # the default is unchanged: no volumes
    plain = tmp_path / "plain"
    assert make_demo_data([str(plain), "--size", str(SIZE), "--n-train", "2", "--n-val", "2", "--n-test", "2"]) == 0
    assert not (plain / "volumes").exists()


def test_command_line_refuses_bad_volume_settings(tmp_path, capsys):
    status = make_demo_data([str(tmp_path / "demo"), "--volumes", "2", "--volume-slices", "1"])
    assert status == 2
    assert "slices must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="lesion_slices"):
        DemoVolumeSettings(lesion_slices=(1, 4))
    with pytest.raises(ValueError, match="slice_step_mm"):
        DemoVolumeSettings(slice_step_mm=0.0)


def test_benchmark_3d_is_the_same_files_for_the_same_settings(benchmark_3d, tmp_path):
    again = tmp_path / "again"
    build_demo_volumes(again, TINY_3D)
    files = sorted(path.relative_to(benchmark_3d) for path in benchmark_3d.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    for file in files:
        if file.name != "manifest.json":  # it holds the build time
            assert (benchmark_3d / file).read_bytes() == (again / file).read_bytes(), file
    manifest, repeated = (json.loads((root / "manifest.json").read_text()) for root in (benchmark_3d, again))
    assert {**manifest, "build_seconds": 0} == {**repeated, "build_seconds": 0}


def test_benchmark_3d_draws_each_split_and_volume_from_its_own_stream():
    anatomy = {split: render_volume(TINY_3D, 0, positive=False, split=split)["lesion_free"] for split in SPLITS_3D}
    others = [
        render_volume(TINY_3D, 1, positive=False, split="test")["lesion_free"],
        # the test volumes of the same seed and grid, and the benchmark of another seed
        render_volume(replace(TINY_3D, training_splits=False), 0, positive=False)["lesion_free"],
        render_volume(replace(TINY_3D, demo=replace(TINY_3D.demo, seed=8)), 0, positive=False)["lesion_free"],
    ]
    volumes = [*anatomy.values(), *others]
    for a in range(len(volumes)):
        for b in range(a + 1, len(volumes)):
            assert not np.array_equal(volumes[a], volumes[b]), (a, b)
    with pytest.raises(ValueError, match="split must be one of test"):
        render_volume(TINY, 0, positive=False, split="training")


def test_benchmark_3d_volumes_are_whole_isotropic_grids_with_exact_masks(benchmark_3d):
    manifest = json.loads((benchmark_3d / "manifest.json").read_text())
    for split in SPLITS_3D:
        for index, item in enumerate(load_datalist(benchmark_3d / "datalist.json", split, require_mask=True)):
            image, mask = _array(Path(item["image"])), _array(Path(item["mask"]))
            assert image.shape == mask.shape == (32, 32, 32)
            assert image.dtype == np.int16 and mask.dtype == np.uint8
            np.testing.assert_allclose(_affine(Path(item["image"]))[:3, :3], np.diag([-5.0, -5.0, 5.0]), atol=1e-6)
            np.testing.assert_array_equal(_affine(Path(item["mask"])), _affine(Path(item["image"])))
            # the same volume without lesions differs from the stored one exactly at the mask
            volume = render_volume(TINY_3D, index, bool(item["label"]), split=split)
            np.testing.assert_array_equal(volume["image"], image)
            np.testing.assert_array_equal(image != volume["lesion_free"], mask.astype(bool))
            case = f"{split}_{index:05d}"
            if item["label"] == 0:
                assert not mask.any() and case not in manifest["lesions"]
                continue
            records = manifest["lesions"][case]
            assert sum(record["voxels"] for record in records) == int(mask.sum())
            for record in records:
                # several voxels in every axis, and a central cross-section within the benchmark's range
                assert min(record["extent_voxels"]) >= 3, (case, record)
                low, high = TINY_3D.demo.lesions.area_fraction
                assert low <= record["central_area_fraction"] <= high


def test_benchmark_3d_datalist_has_the_splits_and_a_few_dicom_test_volumes(benchmark_3d):
    datalist = _datalist(benchmark_3d)
    assert list(datalist) == [*SPLITS_3D, "test_dicom"]
    for split, count in zip(SPLITS_3D, (3, 2, 2), strict=True):
        assert [item["image"] for item in datalist[split]] == [f"{split}_{i:05d}.nii.gz" for i in range(count)]
        assert [item["mask"] for item in datalist[split]] == [f"{split}_{i:05d}_mask.nii.gz" for i in range(count)]
        assert sum(item["label"] for item in datalist[split]) == count // 2
    # one positive and one negative test volume as DICOM series, each its NIfTI volume with the mask in its grid
    dicom = datalist["test_dicom"]
    assert sorted(item["label"] for item in dicom) == [0, 1]
    for item in dicom:
        case = item["image"].removesuffix("_dicom")
        assert {"image": f"{case}.nii.gz", "label": item["label"], "mask": f"{case}_mask.nii.gz"} in datalist["test"]
        series = read_dicom_series(_dicom_files(benchmark_3d / item["image"]))
        slices = [pydicom.dcmread(path).pixel_array.T for path in series.paths]  # [row, column] to (column, row)
        np.testing.assert_array_equal(np.stack(slices, axis=-1), _array(benchmark_3d / f"{case}.nii.gz"))
        np.testing.assert_allclose(series.affine, _affine(benchmark_3d / f"{case}.nii.gz"), atol=1e-4)
        np.testing.assert_array_equal(_array(benchmark_3d / item["mask"]), _array(benchmark_3d / f"{case}_mask.nii.gz"))
    assert [item["volume"] for item in collect_inputs(benchmark_3d / "datalist.json", section="training")] == [
        NIFTI_VOLUME
    ] * 3
    manifest = json.loads((benchmark_3d / "manifest.json").read_text())
    assert manifest["counts"]["training"] == {"total": 3, "positive": 1}
    assert set(manifest["leakage_check_auc"]) == {"mean", "std", "min", "max", "p01", "p99"}
    assert manifest["settings"]["training_splits"] is True and manifest["build_seconds"] > 0


def test_command_line_builds_the_3d_benchmark_with_the_flags_given(tmp_path, capsys):
    out = tmp_path / "demo3d"
    status = make_demo_data(
        [str(out), "--anatomy", "mni152_3d", "--seed", "3", "--n-train", "2", "--n-val", "0", "--n-test", "2"]
        + ["--lesion-area", "0.03", "0.05", "--lesion-contrast", "0.3", "0.4"]
    )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["training"] == {"total": 2, "positive": 1}
    assert summary["counts"]["validation"] == {"total": 0, "positive": 0}
    assert "leakage_check_auc" in summary
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["demo"]["seed"] == 3 and settings["demo"]["lesions"]["area_fraction"] == [0.03, 0.05]
    assert settings["demo"]["lesions"]["contrast"] == [0.3, 0.4] and settings["demo"]["size"] == 32
    assert _array(out / _datalist(out)["test"][0]["image"]).shape == (32, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo3d"]
    # the defaults follow the anatomy: the benchmark's own
    assert _settings(_parser().parse_args(["out", "--anatomy", "mni152_3d"])) == BENCHMARK_3D.demo


@pytest.mark.parametrize(
    ("anatomy", "flags", "refused"),
    [
        ("mni152_3d", ["--size", "64"], "--size"),
        ("mni152_3d", ["--volumes", "2"], "--volumes"),
        ("mni152_3d", ["--volume-slices", "8"], "--volume-slices"),
        ("chest_cr", ["--volume-slices", "8"], "--volume-slices"),
    ],
)
def test_command_line_refuses_flags_the_anatomy_does_not_use(tmp_path, capsys, anatomy, flags, refused):
    status = make_demo_data([str(tmp_path / "out"), "--anatomy", anatomy, *flags])
    assert status == 2
    error = capsys.readouterr().err
    assert f"{refused} cannot be combined with --anatomy {anatomy}" in error
    assert not (tmp_path / "out").exists()
