"""The chest radiograph demo benchmark: layout and datalist, determinism, exact masks inside the lung fields, the
affine's spacing, nodules that brighten the image only inside their mask, and the command line's ``--anatomy``."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medxgan_monai.cli.make_demo_data import _parser, _settings
from medxgan_monai.cli.make_demo_data import main as make_demo_data
from medxgan_monai.data import (
    CHEST_NODULES,
    DemoDataSettings,
    LesionSettings,
    RadiographDataSettings,
    build_radiograph_dataset,
    image_statistics_auc,
    load_datalist,
    render_radiograph_sample,
)
from medxgan_monai.data.radiograph_demo import SOURCE_FILE, ChestRadiograph, sample_generators, source_pixel_spacing

pytestmark = pytest.mark.skipif(
    get_testdata_file(SOURCE_FILE, download=False) is None,
    reason=f"pydicom-data (which ships {SOURCE_FILE}) is not installed",
)

SIZE = 32
TINY = RadiographDataSettings(size=SIZE, seed=3, n_train=8, n_val=4, n_test=4)
COUNTS = {"training": 8, "validation": 4, "test": 4}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("chest") / "chest_cr"
    return out, build_radiograph_dataset(out, TINY)


@pytest.fixture(scope="module")
def source() -> ChestRadiograph:
    return ChestRadiograph(TINY.pixel_spacing_mm)


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _datalist(folder: Path) -> dict:
    return json.loads((folder / "datalist.json").read_text())


def test_layout_datalist_and_manifest(built):
    out, manifest = built
    assert sorted(p.name for p in out.iterdir()) == ["datalist.json", "images", "manifest.json", "masks"]
    datalist = _datalist(out)
    assert list(datalist) == ["training", "validation", "test"]
    stems = []
    for split, count in COUNTS.items():
        items = datalist[split]
        assert len(items) == count
        assert sum(item["label"] for item in items) == count // 2
        for index, item in enumerate(items):
            stem = f"{split}_{index:05d}"
            assert item == {"image": f"images/{stem}.nii.gz", "label": item["label"], "mask": f"masks/{stem}.nii.gz"}
            stems.append(stem)
        # the product's loader reads it as it reads the MNI demo's
        for item in load_datalist(out / "datalist.json", split, require_mask=True):
            assert Path(item["image"]).is_file() and Path(item["mask"]).is_file()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{s}.nii.gz" for s in stems)
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{s}.nii.gz" for s in stems)
    image = _array(out / "images" / "training_00000.nii.gz")
    assert image.shape == (SIZE, SIZE) and image.dtype == np.int16
    assert 0 <= image.min() and image.max() <= 4095 and image.std() > 0

    assert "pydicom-data" in manifest["anatomy_source"] and SOURCE_FILE in manifest["anatomy_source"]
    assert manifest["settings"] == asdict(TINY)
    assert manifest["counts"]["training"] == {"total": 8, "positive": 4}
    # the leakage check in the manifest is the one image_statistics_auc computes from the files
    assert manifest["leakage_check_auc"] == image_statistics_auc(out / "datalist.json")
    assert set(manifest["leakage_check_auc"]) == {"mean", "std", "min", "max", "p01", "p99"}
    assert json.loads((out / "manifest.json").read_text())["lesions"] == manifest["lesions"]
    # nothing but the finished folder is left beside it
    assert sorted(p.name for p in out.parent.iterdir()) == ["chest_cr"]


def test_same_settings_give_identical_arrays_and_another_seed_does_not(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_radiograph_dataset(again, TINY)
    assert _datalist(again) == _datalist(out)
    for split in COUNTS:
        for item in _datalist(out)[split]:
            for key in ("image", "mask"):
                first, second = nib.load(out / item[key]), nib.load(again / item[key])
                assert np.asarray(first.dataobj).tobytes() == np.asarray(second.dataobj).tobytes()
                np.testing.assert_array_equal(first.affine, second.affine)
    other = tmp_path / "other"
    build_radiograph_dataset(other, replace(TINY, seed=4))
    differs = [
        not np.array_equal(_array(out / item["image"]), _array(other / item["image"]))
        for item in _datalist(out)["training"]
    ]
    assert all(differs)


def test_masks_are_exactly_the_positives_nodules_inside_the_lung_fields(built, source):
    out, manifest = built
    for split in COUNTS:
        for index, item in enumerate(_datalist(out)[split]):
            stem = f"{split}_{index:05d}"
            mask = _array(out / item["mask"])
            assert set(np.unique(mask)) <= {0, 1}
            assert bool(mask.any()) == bool(item["label"]), stem
            assert (stem in manifest["lesions"]) == bool(item["label"])
            # the written sample is the one render_radiograph_sample gives for (seed, split, index)
            sample = render_radiograph_sample(source, TINY, sample_generators(TINY.seed, split, index), item["label"])
            np.testing.assert_array_equal(_array(out / item["image"]), sample["image"])
            np.testing.assert_array_equal(mask, sample["mask"])
            assert sample["lungs"].sum() > 0.15 * SIZE * SIZE  # every crop shows lung
            assert not (mask.astype(bool) & ~sample["lungs"]).any(), f"{stem}: nodule outside the lung fields"
            if item["label"]:
                records = manifest["lesions"][stem]
                assert 1 <= len(records) <= CHEST_NODULES.max_lesions
                assert all(r["polarity"] == "hyper" for r in records)
                assert sum(r["area_fraction"] for r in records) == pytest.approx(mask.sum() / SIZE**2, abs=1e-4)


def test_nodules_brighten_the_same_sample_only_inside_their_mask(source):
    for index in range(6):
        generators = [sample_generators(TINY.seed, "test", index) for _ in range(2)]
        with_nodules = render_radiograph_sample(source, TINY, generators[0], positive=True)
        without = render_radiograph_sample(source, TINY, generators[1], positive=False)
        inside = with_nodules["mask"].astype(bool)
        assert inside.any() and not without["mask"].any()
        difference = with_nodules["image"].astype(int) - without["image"].astype(int)
        np.testing.assert_array_equal(difference[~inside], 0)
        # brighter on average by a visible amount (the intensity scale is 1000 at the radiograph's 99.5th percentile)
        assert difference[inside].mean() > 40
        assert (difference[inside] > 0).mean() > 0.8


def test_affine_has_the_crops_pixel_spacing(built, source):
    out, _ = built
    low, high = (TINY.field_of_view_mm * s / SIZE for s in TINY.scale_range)
    spacings = []
    for index, item in enumerate(_datalist(out)["training"]):
        image, mask = nib.load(out / item["image"]), nib.load(out / item["mask"])
        np.testing.assert_array_equal(image.affine, mask.affine)
        sample = render_radiograph_sample(source, TINY, sample_generators(TINY.seed, "training", index), False)
        spacing = sample["pixel_spacing_mm"]
        assert low <= spacing <= high
        np.testing.assert_allclose(image.affine, np.diag([-spacing, -spacing, 1.0, 1.0]), atol=1e-6)
        np.testing.assert_allclose(image.header.get_zooms()[:2], [spacing, spacing], rtol=1e-6)
        spacings.append(spacing)
    assert len(set(spacings)) == len(spacings)  # the random scale is recorded, not a nominal spacing


def test_source_spacing_comes_from_the_header_or_the_collimator():
    dataset = pydicom.dcmread(get_testdata_file(SOURCE_FILE, download=False), stop_before_pixels=True)
    # PixelSpacing is 0 in this file: 368 mm of collimator over 1841 columns, 392 mm over 1955 rows
    assert source_pixel_spacing(dataset) == pytest.approx((0.2, 0.2))
    header = Dataset()
    header.PixelSpacing = [0, 0]
    header.ImagerPixelSpacing = [0.15, 0.148]
    assert source_pixel_spacing(header) == (0.15, 0.148)
    header.ImagerPixelSpacing = [0, 0]
    with pytest.raises(ValueError, match="no positive PixelSpacing"):
        source_pixel_spacing(header)


def test_command_line_builds_the_chest_set_with_its_own_lesion_defaults(tmp_path, capsys):
    out = tmp_path / "chest"
    status = make_demo_data(
        [str(out), "--anatomy", "chest_cr", "--size", str(SIZE), "--n-train", "4", "--n-val", "2", "--n-test", "2"]
        + ["--lesion-contrast", "0.3", "0.4"]
    )
    assert status == 0
    assert json.loads(capsys.readouterr().out)["counts"]["training"] == {"total": 4, "positive": 2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["anatomy_source"].startswith("pydicom-data")
    # the contrast given replaces the chest's; its other nodule settings stay (bright only, the chest's sizes)
    expected = asdict(replace(CHEST_NODULES, contrast=(0.3, 0.4)))
    assert manifest["settings"]["lesions"] == {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
    assert not (out / "dicom").exists()
    assert all(all(r["contrast"] >= 0.3 for r in records) for records in manifest["lesions"].values())


def test_command_line_defaults_follow_the_anatomy():
    chest = _settings(_parser().parse_args(["out", "--anatomy", "chest_cr"]))
    assert chest == RadiographDataSettings()
    assert chest.lesions == CHEST_NODULES
    brain = _settings(_parser().parse_args(["out", "--lesion-area", "0.05", "0.1", "--seed", "5"]))
    assert brain == DemoDataSettings(seed=5, lesions=LesionSettings(area_fraction=(0.05, 0.1)))


def test_command_line_refuses_volumes_for_the_chest(tmp_path, capsys):
    status = make_demo_data([str(tmp_path / "chest"), "--anatomy", "chest_cr", "--volumes", "2"])
    assert status == 2
    error = capsys.readouterr().err
    assert "--volumes" in error and "chest_cr" in error
    assert not (tmp_path / "chest").exists()
