"""Shared fixtures: one tiny demo dataset per test session (32x32 pixels, a few dozen images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medxgan_monai.data import DemoDataSettings, build_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
TINY_SETTINGS = DemoDataSettings(size=32, seed=7, n_train=16, n_val=8, n_test=8)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "tiny"
    build_demo_dataset(out, TINY_SETTINGS)
    return out


#: overrides that shrink the inference and evaluation bundles' networks and steps for tests
TINY_BUNDLE = {
    "image_size": [32, 32],
    "anatomy_dim": 16,
    "pathology_dim": 4,
    "network_def#block_config": [2, 2],
    "generator_def#channels": [16, 8],
    "encoder_def#channels": [8, 16],
    "inversion_steps": 2,
    "counterfactual_steps": 2,
    "latent_ig_steps": 4,
    "ig_steps": 4,
    "medxgan_ig_steps": 4,
    "sweep_frames": 3,
    "device": "cpu",
}


#: overrides that shrink the training bundles' networks (classifier, G, D, E) at 32 pixels, two iterations per epoch
TINY_TRAINING = {
    "image_size": [32, 32],
    "batch_size": 4,
    "device": "cpu",
    "network_def#block_config": [2, 2],
    "anatomy_dim": 16,
    "pathology_dim": 4,
    "generator#channels": [16, 8],
    "discriminator#channels": [8, 16],
    "encoder#channels": [8, 16],
    "train#trainer#epoch_length": 2,
}


#: the evaluation bundle's overrides for a recipe's evaluation in tests: two methods, few steps, small statistics
TINY_EVALUATION = {
    "methods": ["medxgan_ig", "gradient"],
    "inversion_steps": 2,
    "counterfactual_steps": 1,
    "counterfactual_max_steps": 2,
    "medxgan_ig_steps": 4,
    "randomization_images": 0,
    "robustness_images": 0,
    "perturbation_steps": 2,
    "bootstrap_samples": 50,
}


def save_tiny_weights(folder: Path, size: int = 32, spatial_dims: int = 2) -> dict:
    """Randomly initialised (seeded) classifier, generator and encoder matching :data:`TINY_BUNDLE` at ``size``
    pixels along each of ``spatial_dims`` axes; returns the bundle overrides naming them (and the image size)."""
    import torch
    from monai.networks.nets import DenseNet

    from medxgan_monai.networks import MedXGANEncoder, MedXGANGenerator

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shape = [size] * spatial_dims
    codes = {"image_size": shape, "anatomy_dim": 16, "pathology_dim": 4}
    modules = {
        "classifier_ckpt": DenseNet(spatial_dims, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2)),
        "generator_ckpt": MedXGANGenerator(spatial_dims, channels=(16, 8), **codes),
        "encoder_ckpt": MedXGANEncoder(spatial_dims, channels=(8, 16), **codes),
    }
    overrides: dict = {"image_size": shape}
    for key, module in modules.items():
        overrides[key] = str(folder / f"{key}.pt")
        torch.save(module.state_dict(), overrides[key])
    return overrides


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict:
    return save_tiny_weights(tmp_path_factory.mktemp("weights"))


def brain_like(shape, seed: int = 0):
    """A bright disc (r = 0.8) on a dark background with noise: an image every loader and explainer accepts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    return (1000 * (np.sqrt((grid**2).sum(0)) < 0.8) + 50 * rng.random(shape)).astype(np.float32)


def evaluation_workflow(datalist: Path, output_dir: Path, weights: dict, config_files=(), **overrides):
    """The evaluation bundle (``inference.json`` + ``evaluate.json`` + ``config_files``) on the tiny networks of
    :data:`TINY_BUNDLE` with ``weights``, initialized; MLflow in ``output_dir``'s parent folder (``mlruns.db``)."""
    from monai.bundle import ConfigWorkflow

    configs = BUNDLE_ROOT / "configs"
    workflow = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(configs / "evaluate.json"), *config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(BUNDLE_ROOT),
        datalist=str(datalist),
        output_dir=str(output_dir),
        tracking_uri=f"sqlite:///{Path(output_dir).parent / 'mlruns.db'}",
        **{**TINY_BUNDLE, **weights, **overrides},
    )
    workflow.initialize()
    return workflow


def oblique_series(folder: Path, count: int = 5, skip: int | None = None, seed: int = 0) -> list[Path]:
    """An oblique, anisotropic MR series; files named and numbered in shuffled order (sorting must use positions)."""
    import random

    import numpy as np

    from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice

    folder.mkdir(parents=True)
    patient = SyntheticPatient("VOL-TEST", "VOLUME^TEST")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    cosines = (0.96, 0.28, 0.0, 0.0, 0.0, -1.0)  # rows along a tilted x, columns down the feet
    normal = np.cross(cosines[:3], cosines[3:])
    paths = []
    for name_index, index in enumerate(order):
        if index == skip:
            continue
        position = tuple(float(v) for v in np.array([10.0, -20.0, 30.0]) + 2.5 * index * normal)
        geometry = MRSliceGeometry(position, cosines, pixel_spacing=(0.8, 1.2), slice_thickness=2.5)
        pixels = brain_like((36, 40), seed=index).astype(np.uint16)
        path = folder / f"img_{name_index:02d}.dcm"
        write_mr_slice(pixels, geometry, patient, path, instance_number=count - index)
        paths.append(path)
    return paths


def dciodvfy_errors(path) -> list[str]:
    """The "Error" lines dicom3tools' ``dciodvfy`` reports for the DICOM file ``path`` (its IOD checked)."""
    import subprocess

    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
