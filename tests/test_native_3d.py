"""Native 3D: a 3D classifier and a 3D medXGAN explain whole volumes (``configs/3d.json`` on the 2D configs): NIfTI
and DICOM series in, 3D maps in the source geometry, one Parametric Map and one SEG per series, one row per volume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import (
    BUNDLE_ROOT,
    TINY_BUNDLE,
    TINY_EVALUATION,
    TINY_TRAINING,
    brain_like,
    dciodvfy_errors,
    oblique_series,
    save_tiny_weights,
)
from PIL import Image

from medxgan_monai.bundle import overlay_configs, run_inference

CONFIGS = BUNDLE_ROOT / "configs"
OBLIQUE = np.array([[0.0, -0.7, 0.1, 20.0], [1.3, 0.0, 0.0, -31.5], [0.0, 0.05, 3.0, 7.25], [0, 0, 0, 1]])
SIZE = (16, 16, 16)
#: what makes the tiny test overrides 3D: the volume size and the networks' channels as top-level values (the 3D
#: overlay's keys) instead of the 2D tests' nested ones
THREE_D = {
    "image_size": list(SIZE),
    "generator_channels": [16, 8],
    "encoder_channels": [8, 16],
    # the tiny classifier's (the overlay's 3D DenseNet is narrower)
    "network_def#init_features": 32,
    "network_def#growth_rate": 16,
}
#: the tiny inference overrides in 3D, for the networks of ``save_tiny_weights(..., spatial_dims=3)``
TINY_3D = {
    **{key: value for key, value in TINY_BUNDLE.items() if not key.endswith("#channels")},
    **THREE_D,
    "counterfactual_max_steps": 2,
}


@pytest.fixture(scope="module")
def weights_3d(tmp_path_factory) -> dict:
    return save_tiny_weights(tmp_path_factory.mktemp("weights_3d"), size=SIZE[0], spatial_dims=3)


def _explain_3d(inputs, out: Path, weights: dict, **settings):
    """The inference bundle with the 3D overlay (``run_inference``'s ``overlays``); returns its report."""
    overrides = {**TINY_3D, **weights, "methods": ["medxgan_ig", "medxgan", "gradient"], "tracking_uri": None}
    overrides.update(settings, input=[str(p) for p in inputs], output_dir=str(out))
    return run_inference(overrides, BUNDLE_ROOT, overlays=["3d.json"])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_volumes_are_explained_whole_into_their_own_geometry(weights_3d, tmp_path):
    nib.save(nib.Nifti1Image(brain_like((20, 24, 10)), OBLIQUE), tmp_path / "head.nii.gz")
    sources = oblique_series(tmp_path / "series", count=5)
    nib.save(nib.Nifti1Image(brain_like((24, 24)), np.eye(4)), tmp_path / "slice.nii.gz")
    out = tmp_path / "out"
    _explain_3d([tmp_path / "head.nii.gz", tmp_path / "series", tmp_path / "slice.nii.gz"], out, weights_3d)

    source = nib.load(tmp_path / "head.nii.gz")
    for name in ("head_medxgan_ig", "head_gradient", "head_residual_counterfactual", "head_counterfactual"):
        written = nib.load(out / f"{name}.nii.gz")
        assert written.shape == source.shape and np.array_equal(written.affine, source.affine), name
    maps = nib.load(out / "head_medxgan_ig.nii.gz").get_fdata()
    assert maps.max() <= 1 + 1e-6 and (maps.max(axis=(0, 1)) > 0).sum() > 1, "one 3D map over several slices"

    rows = _rows(out / "predictions.csv")
    assert sorted(row["stem"] for row in rows) == ["head", "series"], "one row per volume, none per slice"
    assert all(row["slice"] == "" and 0 <= float(row["probability"]) <= 1 for row in rows)
    errors = _rows(out / "errors.csv")
    assert [row["stem"] for row in errors] == ["slice"] and "3D" in errors[0]["problem"], "a 3D model takes volumes"

    # the series: one Parametric Map and one SEG whose frames reference the instances, in slice order
    parametric_map = pydicom.dcmread(out / "series_medxgan_ig_pm.dcm")
    segmentation = pydicom.dcmread(out / "series_medxgan_ig_seg.dcm")
    assert int(parametric_map.NumberOfFrames) == 5
    referenced = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in parametric_map.PerFrameFunctionalGroupsSequence
    }
    assert referenced == {str(pydicom.dcmread(path).SOPInstanceUID) for path in sources}
    assert segmentation.StudyInstanceUID == pydicom.dcmread(sources[0]).StudyInstanceUID
    if shutil.which("dciodvfy"):
        for name in ("series_medxgan_ig_pm.dcm", "series_medxgan_ig_seg.dcm"):
            assert dciodvfy_errors(out / name) == [], name

    with Image.open(out / "head_panel.png") as panel:
        assert panel.height == 3 * (16 * 3 + 28), "one row for each of the 3 slices with the strongest evidence"
    with Image.open(out / "head_sweep.gif") as sweep:
        assert sweep.n_frames == 2 * TINY_3D["sweep_frames"] - 2, "the sweep of one slice, forth and back"


@pytest.fixture(scope="module")
def volume_datalist(tmp_path_factory) -> Path:
    """Eight small volumes (four with a bright blob and its mask) in training, validation and test sections."""
    folder = tmp_path_factory.mktemp("volumes")
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (20, 20, 12)], indexing="ij"))
    entries = []
    for index in range(8):
        image, label = brain_like((20, 20, 12), seed=index), index % 2
        mask = np.zeros(image.shape, np.uint8)
        if label:
            centre = np.array([8 + index % 4, 10, 6])[:, None, None, None]
            mask = (np.sqrt(((grid - centre) ** 2).sum(0)) < 3).astype(np.uint8)
            image = image + 600.0 * mask
        nib.save(nib.Nifti1Image(image, OBLIQUE), folder / f"v{index}.nii.gz")
        nib.save(nib.Nifti1Image(mask, OBLIQUE), folder / f"v{index}_mask.nii.gz")
        entries.append({"image": f"v{index}.nii.gz", "label": label, "mask": f"v{index}_mask.nii.gz"})
    datalist = {"training": entries[:4], "validation": entries[4:6], "test": entries[6:] + entries[:2]}
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder / "datalist.json"


def test_the_evaluation_scores_whole_volume_maps_against_3d_masks(weights_3d, volume_datalist, tmp_path):
    from conftest import evaluation_workflow

    workflow = evaluation_workflow(
        volume_datalist,
        tmp_path / "evaluation",
        weights_3d,
        config_files=[str(CONFIGS / "3d.json")],
        **{key: value for key, value in TINY_3D.items() if key not in TINY_BUNDLE or key == "image_size"},
        methods=["medxgan_ig", "gradient", "gradcam", "occlusion"],
        section="test",
        perturbation_steps=4,
        bootstrap_samples=200,
        randomization_images=2,
        robustness_images=1,
    )
    workflow.run()
    workflow.finalize()
    rows = _rows(next((tmp_path / "evaluation").glob("**/metrics_per_image.csv")))
    assert {row["method"] for row in rows} == {"medxgan_ig", "gradient", "gradcam", "occlusion"}
    assert len(rows) == 4 * 2, "the two positives of the test section, each whole"
    assert all(0 <= float(row["relevance_mass"]) <= 1 for row in rows)


#: the tiny training overrides in 3D (two iterations per epoch)
TINY_3D_TRAINING = {
    **{key: value for key, value in TINY_TRAINING.items() if not key.endswith("#channels")},
    **THREE_D,
    "discriminator_channels": [8, 16],
}


def test_the_one_command_trains_and_evaluates_a_3d_explainer(volume_datalist, tmp_path, monkeypatch):
    import torch

    from medxgan_monai.networks import MedXGANGenerator
    from medxgan_monai.training import run_bundle_workflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "explainer"
    few_samples = {"validation#num_samples": 8}
    phases = [
        {"name": "classifier", "kind": "classifier", "images": 4},
        {"name": "gan", "kind": "gan", "gan_images": 4, "encoder_images": 4, "settings": few_samples},
        {"name": "counterfactual_encoder", "kind": "counterfactual_encoder", "images": 4},
    ]
    overrides = {"datalist": str(volume_datalist), "output_dir": str(out), "phases": phases, "overlays": ["3d.json"]}
    overrides.update(settings=TINY_3D_TRAINING, evaluation_settings=TINY_EVALUATION)
    run_bundle_workflow(BUNDLE_ROOT, ["train_explainer.json"], "train", overrides)

    generator = MedXGANGenerator(3, image_size=SIZE, anatomy_dim=16, pathology_dim=4, channels=(16, 8))
    generator.load_state_dict(torch.load(out / "gan" / "models" / "generator.pt", weights_only=True))
    assert (out / "counterfactual_encoder" / "models" / "counterfactual_encoder.pt").is_file()
    assert sorted(p.name for p in (out / "gan" / "samples").iterdir())[:1] == ["epoch_0001.png"]
    (evaluated,) = (out / "evaluation").glob("evaluation_*")
    rows = _rows(evaluated / "metrics_per_image.csv")
    assert {row["method"] for row in rows} == {"medxgan_ig", "gradient"} and len(rows) == 2 * 2
    report = (out / "report.md").read_text()
    assert "3d.json" in report and "test_auc" in report


def test_3d_integrated_gradients_add_up_to_the_change_in_probability(weights_3d):
    import torch
    from monai.networks.nets import DenseNet

    from medxgan_monai.explain import (
        IntegratedGradientsExplainer,
        LatentInverter,
        MedXGANIntegratedGradients,
        class_probability,
    )
    from medxgan_monai.networks import FrozenClassifier, MedXGANEncoder, MedXGANGenerator

    classifier = DenseNet(3, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2))
    generator = MedXGANGenerator(3, image_size=SIZE, anatomy_dim=16, pathology_dim=4, channels=(16, 8))
    encoder = MedXGANEncoder(3, image_size=SIZE, anatomy_dim=16, pathology_dim=4, channels=(8, 16))
    for module, key in ((classifier, "classifier_ckpt"), (generator, "generator_ckpt"), (encoder, "encoder_ckpt")):
        module.load_state_dict(torch.load(weights_3d[key], weights_only=True))
    classifier = FrozenClassifier(classifier)
    images = torch.rand(2, 1, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probability = class_probability(classifier, images)
        inverter = LatentInverter(generator.eval(), classifier, encoder.eval(), steps=0)
        raw = MedXGANIntegratedGradients(classifier, generator, inverter, ig_steps=64).raw_attribution(images)
        expected = probability - raw.counterfactual_probability
        ig = IntegratedGradientsExplainer(classifier, steps=64).raw_attribution(images)
        change = probability - class_probability(classifier, torch.zeros_like(images))
    assert raw.maps.shape == ig.maps.shape == (2, 1, *SIZE)
    # a Riemann sum of 64 steps: its gap, reported per image, is small next to the change it explains
    for maps, target, gap in ((raw.maps, expected, raw.details), (ig.maps, change, ig.details)):
        measured = (maps.flatten(1).sum(1) - target).abs()
        assert torch.allclose(gap["completeness_gap"], measured, atol=1e-5)
        assert (measured <= 1e-3 + 0.05 * target.abs()).all(), (measured, target)


@pytest.mark.parametrize("name", ["../configs/3d.json", "/tmp/evil.json", "3d", "missing.json", "metadata.json/.."])
def test_an_overlay_is_only_ever_a_config_file_of_the_bundle(name):
    with pytest.raises(ValueError, match="overlay|no config"):
        overlay_configs(BUNDLE_ROOT, [name])
    assert overlay_configs(BUNDLE_ROOT, ["3d.json"]) == ("3d.json",)
