"""The MONAI model zoo's bundle checks, applied with MONAI's own API: official-schema metadata, JSON format, workflow
properties, the network's input and output, TorchScript export and reload, file sizes, licenses, versions."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

CONFIGS = BUNDLE_ROOT / "configs"
META = str(CONFIGS / "metadata.json")
SCHEMA = BUNDLE_ROOT / "schema" / "meta_schema_20240725.json"
REPOSITORY = BUNDLE_ROOT.parent
#: the zoo's limit on any file in a bundle's models/ (larger ones must be external downloads)
MAX_MODEL_BYTES = 25 * 1024 * 1024


def test_metadata_validates_against_the_official_schema_kept_verbatim():
    """The schema is the zoo's own (its checksum is the one recorded with its source), and the metadata names it."""
    recorded = re.search(r"sha256:\s*`([0-9a-f]{64})`", (SCHEMA.parent / "README.md").read_text()).group(1)
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded
    metadata = json.loads(Path(META).read_text())
    assert metadata["schema"].endswith("/" + SCHEMA.name)
    verify_metadata(meta_file=META, filepath=str(SCHEMA))  # raises on any violation (and skips the download)


def test_every_config_is_in_the_zoos_json_format():
    """4-space indentation, keys in their written order, a final newline: what the zoo's pre-commit formatter writes."""
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path.name} is not formatted"


def test_version_licenses_and_model_sizes():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    metadata = json.loads(Path(META).read_text())
    assert metadata["version"] in metadata["changelog"]
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    assert metadata["version"] == pyproject["project"]["version"]
    assert (BUNDLE_ROOT / "LICENSE").is_file() and (BUNDLE_ROOT / "docs" / "data_license.txt").is_file()
    models = list((BUNDLE_ROOT / "models").iterdir())
    assert {"model.pt", "generator.pt", "encoder.pt"} <= {p.name for p in models}
    too_large = [p.name for p in models if p.stat().st_size > MAX_MODEL_BYTES]
    assert not too_large, f"over 25 MB: {too_large}"


def test_metadata_lists_every_package_the_bundle_needs():
    """Every dependency of the package (torch, MONAI and NumPy have their own metadata fields) is pinned."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    metadata = json.loads(Path(META).read_text())
    dependencies = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", dependency)[0].lower() for dependency in dependencies}
    listed = {name.lower() for name in metadata["required_packages_version"]}
    assert names - {"torch", "monai", "numpy"} <= listed, sorted(names - listed - {"torch", "monai", "numpy"})
    assert "medxgan-monai" in listed
    assert metadata["monai_version"] and metadata["pytorch_version"] and metadata["numpy_version"]


@pytest.mark.parametrize(
    "config_files, workflow_type",
    [
        (["inference.json"], "inference"),
        (["inference.json", "evaluate.json"], "inference"),
        (["train_classifier.json"], "train"),
        (["train_classifier.json", "train_gan.json"], "train"),
    ],
)
def test_workflow_properties_are_complete(config_files, workflow_type, tiny_demo, tmp_path):
    """MONAI's property check of each workflow finds nothing missing or mismatched."""
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in config_files],
        meta_file=META,
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE_ROOT),
        dataset_dir=str(tiny_demo),
        output_dir=str(tmp_path / "out"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}",
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_the_shipped_classifier_passes_the_network_checks_and_exports_to_torchscript(tmp_path):
    """``verify_net_in_out`` on the inference config, then ``ckpt_export`` of the shipped weights, reloaded with
    ``torch.jit.load``, gives the same logits as the network loaded from the checkpoint."""
    inference = str(CONFIGS / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=inference, device="cpu")
    exported = tmp_path / "verify_model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(BUNDLE_ROOT / "models" / "model.pt"),
        meta_file=META,
        config_file=inference,
        bundle_root=str(BUNDLE_ROOT),
    )
    from medxgan_monai.bundle import inference_config

    network = inference_config(BUNDLE_ROOT).get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLE_ROOT / "models" / "model.pt", weights_only=True))
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network.eval()(images)
        assert torch.allclose(torch.jit.load(str(exported))(images), expected, atol=1e-4)


def test_the_bundle_runs_from_its_own_folder_and_writes_under_the_working_folder(tmp_path, monkeypatch):
    """As a zoo user runs a downloaded bundle: ``configs/inference.json`` from inside the bundle folder, no
    ``--bundle_root``; the shipped weights are found there and outputs and MLflow land under the working folder."""
    import shutil

    import nibabel as nib
    import numpy as np
    from conftest import brain_like

    bundle = tmp_path / "medxgan_bundle"
    for part in ("configs", "models", "docs"):
        shutil.copytree(BUNDLE_ROOT / part, bundle / part)
    shutil.copy(BUNDLE_ROOT / "LICENSE", bundle / "LICENSE")
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(brain_like((48, 40)), np.diag([0.8, 1.2, 1.0, 1.0])), scan)
    monkeypatch.chdir(bundle)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workflow = ConfigWorkflow(
        config_file="configs/inference.json",
        meta_file="configs/metadata.json",
        logging_file=False,
        workflow_type="inference",
        input=[str(scan)],
        methods=["gradcam"],
        device="cpu",
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    (run,) = (bundle / "outputs" / "inference").glob("inference_*")
    assert (run / "scan_gradcam.nii.gz").is_file() and (run / "predictions.csv").is_file()
    assert (bundle / "outputs" / "inference" / "mlruns.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["medxgan_bundle", "scan.nii.gz"], "nothing outside"
