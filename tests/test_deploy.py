"""The explainer in the MLflow model registry: register, load by models:/ URI, predict, serve over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_BUNDLE, brain_like

from medxgan_monai.deploy import encode_image_file, register_explainer
from medxgan_monai.node.orthanc import free_port


@pytest.fixture(scope="module")
def registered(weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'registry.db'}"
    overrides = {key: value for key, value in {**TINY_BUNDLE, **weights}.items() if key != "device"}
    # the default methods: the bundle's, the default map medxgan_ig first
    version = register_explainer("tiny-explainer", uri, overrides=overrides)
    scan = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(brain_like((40, 36)), np.eye(4)), scan)
    (folder / "garbage.nii.gz").write_bytes(b"not a scan")
    rows = pd.DataFrame([encode_image_file(scan), encode_image_file(folder / "garbage.nii.gz")])
    return {"uri": uri, "version": version, "rows": rows, "folder": folder}


def test_a_registered_version_loads_by_uri_and_explains(registered, monkeypatch):
    assert int(registered["version"].version) == 1 and registered["version"].name == "tiny-explainer"
    assert "MLFLOW_TRACKING_URI" not in os.environ, "registration leaves the caller's tracking settings alone"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    model = mlflow.pyfunc.load_model("models:/tiny-explainer/1")
    assert model.metadata.signature is not None and model.metadata.get_input_schema().input_names() == [
        "name",
        "image_base64",
    ]
    result = model.predict(registered["rows"])
    good, bad = result.to_dict(orient="records")
    assert 0 <= good["probability"] <= 1 and 0 <= good["counterfactual_probability"] <= 1 and not good["error"]
    assert 0 <= good["residual_counterfactual_probability"] <= 1
    from medxgan_monai.bundle import inference_config
    from medxgan_monai.explain import method_names

    bundle_methods = inference_config().get_parsed_content("methods")
    assert [column for column in result.columns if column in method_names()] == bundle_methods
    assert bundle_methods[0] == "medxgan_ig", "the registered model serves the default map"
    for method in bundle_methods:
        saliency = np.asarray(good[method])
        assert saliency.shape == (32, 32) and saliency.min() >= 0 and saliency.max() in (0, 1), method
    assert "garbage.nii.gz" in bad["error"] and bad["medxgan_ig"] == []


def test_mlflow_models_serve_answers_with_saliency_maps(registered):
    port = free_port()
    # as in an activated virtual environment: mlflow starts the uvicorn next to this interpreter
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    environment = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"], "PATH": path}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny-explainer/1"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stderr.read().decode()[-2000:]) from None
                time.sleep(0.5)
        payload = json.dumps({"dataframe_records": registered["rows"].iloc[:1].to_dict(orient="records")}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=payload, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            (prediction,) = json.loads(answer.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert 0 <= prediction["probability"] <= 1 and np.asarray(prediction["medxgan"]).shape == (32, 32)


def test_exported_generator_and_encoder_reproduce_the_networks(tmp_path):
    import torch

    from medxgan_monai.deploy import export_network, load_exported
    from medxgan_monai.networks import MedXGANEncoder, MedXGANGenerator

    torch.manual_seed(0)
    generator = MedXGANGenerator(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(16, 8)).eval()
    encoder = MedXGANEncoder(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(8, 16)).eval()
    export_network(generator, (torch.randn(2, 16), torch.randn(2, 4)), tmp_path / "generator.pt2")
    export_network(encoder, (torch.rand(2, 1, 32, 32),), tmp_path / "encoder.pt2")
    codes = (torch.randn(5, 16), torch.randn(5, 4))  # another batch size than at export
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_exported(tmp_path / "generator.pt2")(*codes), generator(*codes), atol=1e-4)
        for exported, original in zip(load_exported(tmp_path / "encoder.pt2")(images), encoder(images), strict=True):
            assert torch.allclose(exported, original, atol=1e-4)


def test_classifier_exports_with_monai_ckpt_export(weights, tmp_path):
    import torch
    from conftest import BUNDLE_ROOT
    from monai.bundle import ckpt_export
    from monai.networks.nets import DenseNet

    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=weights["classifier_ckpt"],
        meta_file=str(BUNDLE_ROOT / "configs" / "metadata.json"),
        config_file=str(BUNDLE_ROOT / "configs" / "inference.json"),
        bundle_root=str(BUNDLE_ROOT),
        **{"network_def#block_config": [2, 2]},
    )
    network = DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2)).eval()
    network.load_state_dict(torch.load(weights["classifier_ckpt"], weights_only=True))
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "model.ts"))(images), network(images), atol=1e-4)
