"""The demo benchmark builder: determinism, masks, geometry of the DICOM copy, the datalists."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import TINY_SETTINGS

from medxgan_monai.data import (
    DemoDataSettings,
    LesionSettings,
    build_demo_dataset,
    image_statistics_auc,
    load_datalist,
)
from medxgan_monai.data.lesions import draw_lesions
from medxgan_monai.transforms import load_scan


def _array(path):
    return np.asarray(nib.load(path).dataobj)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tiny_demo, tmp_path):
    again = tmp_path / "again"
    build_demo_dataset(again, TINY_SETTINGS)
    other = tmp_path / "other"
    build_demo_dataset(other, DemoDataSettings(size=32, seed=8, n_train=16, n_val=8, n_test=8))
    first = json.loads((tiny_demo / "datalist.json").read_text())
    assert json.loads((again / "datalist.json").read_text()) == first
    for item in first["training"] + first["test"]:
        np.testing.assert_array_equal(_array(tiny_demo / item["image"]), _array(again / item["image"]))
        np.testing.assert_array_equal(_array(tiny_demo / item["mask"]), _array(again / item["mask"]))
        dcm = item["image"].replace("images/", "dicom/").replace(".nii.gz", ".dcm")
        assert pydicom.dcmread(tiny_demo / dcm).SOPInstanceUID == pydicom.dcmread(again / dcm).SOPInstanceUID
    differing = sum(
        not np.array_equal(_array(tiny_demo / item["image"]), _array(other / item["image"]))
        for item in first["training"]
    )
    assert differing == len(first["training"])


def test_masks_match_labels_and_lesion_sizes(tiny_demo):
    manifest = json.loads((tiny_demo / "manifest.json").read_text())
    for split in ("training", "validation", "test"):
        items = load_datalist(tiny_demo / "datalist.json", split)
        labels = [item["label"] for item in items]
        assert sum(labels) == len(items) // 2
        for item in items:
            mask = _array(item["mask"])
            assert mask.shape == (32, 32)
            assert set(np.unique(mask)) <= {0, 1}
            assert bool(mask.any()) == bool(item["label"]), item["image"]
    for records in manifest["lesions"].values():
        assert 1 <= len(records) <= 3
        for lesion in records:
            assert 0 < lesion["area_fraction"] <= 0.15 + 1e-6


def test_no_two_samples_share_anatomy(tiny_demo):
    items = load_datalist(tiny_demo / "datalist.json", "training")
    images = [_array(item["image"]).astype(np.float64) for item in items]
    for a in range(len(images)):
        for b in range(a + 1, len(images)):
            assert not np.array_equal(images[a], images[b])


def test_lesions_change_only_masked_brain_pixels():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    brain = (yy - 32) ** 2 / 28**2 + (xx - 32) ** 2 / 22**2 < 1
    anatomy = np.where(brain, 0.6 + 0.1 * np.sin(xx / 3.0), 0.0)
    settings = LesionSettings()
    for _ in range(20):
        image, mask, records = draw_lesions(anatomy, brain, rng, settings)
        assert mask.any() and not (mask & ~brain).any()
        np.testing.assert_array_equal(image[~mask], anatomy[~mask])
        assert (image[mask] != anatomy[mask]).mean() > 0.9
        assert image.max() <= anatomy.max() and image.min() >= anatomy.min()
        total = sum(r["area_fraction"] for r in records)
        assert total == pytest.approx(mask.sum() / mask.size, abs=1e-3)
        assert 0.6 * settings.area_fraction[0] <= min(r["area_fraction"] for r in records)


def test_dicom_copy_has_the_same_pixels_and_geometry(tiny_demo):
    items = json.loads((tiny_demo / "datalist_dicom.json").read_text())["validation"]
    uids = set()
    for item in items:
        ds = pydicom.dcmread(tiny_demo / item["image"])
        assert ds.Modality == "MR" and ds.PatientIdentityRemoved == "YES"
        assert ds.PatientName.family_name == "DEMO" and ds.PatientBirthDate == ""
        uids.update({ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID})
        from_dicom = load_scan(tiny_demo / item["image"])
        from_nifti = load_scan(tiny_demo / item["image"].replace("dicom/", "images/").replace(".dcm", ".nii.gz"))
        np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
        # a single DICOM slice carries no slice spacing, so only the in-plane columns and the origin are compared
        np.testing.assert_allclose(from_dicom.affine[:, [0, 1, 3]], from_nifti.affine[:, [0, 1, 3]], atol=1e-4)
    assert len(uids) == 3 * len(items)


def test_simple_image_statistics_do_not_predict_the_label(tmp_path):
    manifest = build_demo_dataset(tmp_path / "leak", DemoDataSettings(size=32, n_train=120, n_val=2, n_test=2))
    for statistic, auc in manifest["leakage_check_auc"].items():
        assert 0.35 < auc < 0.65, (statistic, auc)
    assert manifest["leakage_check_auc"] == image_statistics_auc(tmp_path / "leak" / "datalist.json")


def test_existing_output_is_not_overwritten(tiny_demo):
    with pytest.raises(FileExistsError):
        build_demo_dataset(tiny_demo, TINY_SETTINGS)


def test_outputs_get_ordinary_file_permissions(tiny_demo):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE((tiny_demo / "images" / "training_00000.nii.gz").stat().st_mode)
    assert mode == 0o666 & ~mask
    folder_mode = stat.S_IMODE(tiny_demo.stat().st_mode)
    assert folder_mode == 0o777 & ~mask
