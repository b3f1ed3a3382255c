"""User values reach the MONAI configs as data: a file name, folder, datalist entry, run or experiment name that
looks like config syntax (``$`` code, ``@`` reference, ``#`` id separator) is that name, never code or a reference.

Each test runs from ``tmp_path`` with relative names, as a shell loop over received files would: MONAI reads a
string as code only when it starts with ``$``. The payload would create the marker file ``PWNED`` if evaluated.
"""

from __future__ import annotations

import csv
import json
import shutil

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import BUNDLE_ROOT, TINY_BUNDLE, brain_like
from mlflow.tracking import MlflowClient

from medxgan_monai.bundle import run_inference
from medxgan_monai.cli.explain import main as explain_main
from medxgan_monai.deploy import encode_image_file, register_explainer
from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice
from medxgan_monai.node import ExplanationProcessor, Spool

MARKER = "PWNED"
#: a file name that runs code if evaluated: creates the marker, then fails on the undefined name ``scan``
PAYLOAD = f"$__import__('pathlib').Path('{MARKER}').touch() or scan.nii.gz"
#: an innocent name that MONAI would evaluate (NameError: HOME_scan)
DOLLAR_NAME = "$HOME_scan.nii.gz"
#: an innocent name that MONAI would rewrite to ``scan::2.nii.gz``
HASH_NAME = "scan#2.nii.gz"


def _scan(path, shape=(40, 36), seed=0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(brain_like(shape, seed=seed), np.eye(4)), path)
    return str(path)


def _sources(output_dir) -> list[str]:
    with open(output_dir / "predictions.csv", newline="") as stream:
        return sorted(row["source"] for row in csv.DictReader(stream))


@pytest.fixture
def tiny_weights(weights, tmp_path) -> dict:
    """The tiny weights copied into a folder whose name holds ``#`` (the path must not be rewritten)."""
    folder = tmp_path / "weights#1"
    folder.mkdir()
    copied = {key: shutil.copy(path, folder) for key, path in weights.items() if key.endswith("_ckpt")}
    return {**weights, **copied}


def test_explain_command_takes_file_and_folder_names_as_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    options = ["--methods", "gradient", "--device", "cpu"]
    names = [PAYLOAD, DOLLAR_NAME, HASH_NAME]
    for seed, name in enumerate(names):
        _scan(tmp_path / name, shape=(48, 40), seed=seed)

    assert explain_main([*names, "--output", "out", *options]) == 0
    assert not (tmp_path / MARKER).exists(), "a file name was run as Python"
    assert _sources(tmp_path / "out") == sorted(str(tmp_path / name) for name in names)

    # an output folder named like config syntax is that folder
    assert explain_main([HASH_NAME, "--output", "$HOME_out#1", *options]) == 0
    assert _sources(tmp_path / "$HOME_out#1") == [str(tmp_path / HASH_NAME)]

    # a missing file with such a name is named in the error, not evaluated
    (tmp_path / PAYLOAD).unlink()
    assert explain_main([PAYLOAD, "--output", "other", *options]) == 2
    assert f"{PAYLOAD}: input does not exist" in capsys.readouterr().err
    assert not (tmp_path / MARKER).exists()


def test_run_inference_takes_every_value_as_data(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _scan(tmp_path / PAYLOAD)
    _scan(tmp_path / "@section" / "scan.nii.gz", seed=1)  # a folder; a whole "@id" is a reference to an entry
    experiment = f"$__import__('pathlib').Path('{MARKER}').touch() or experiment"
    report = run_inference(
        {
            **TINY_BUNDLE,
            **tiny_weights,
            "input": [PAYLOAD, "@section"],
            "output_dir": "$out#1",
            "methods": ["gradient"],
            "run_name": "@run#1",
            "experiment_name": experiment,
            "tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}",
        }
    )
    assert not (tmp_path / MARKER).exists(), "a value was run as Python"
    assert report.problems == []
    assert _sources(tmp_path / "$out#1") == sorted(
        [str(tmp_path / PAYLOAD), str(tmp_path / "@section" / "scan.nii.gz")]
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_name == "@run#1"
    assert run.data.params["classifier_ckpt"] == tiny_weights["classifier_ckpt"]


def test_datalist_path_and_entries_are_data(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lists = tmp_path / "$HOME_lists"
    _scan(lists / PAYLOAD)
    _scan(lists / HASH_NAME, seed=1)
    entries = [{"image": PAYLOAD, "label": 1}, {"image": HASH_NAME, "label": 0}]
    (lists / "datalist.json").write_text(json.dumps({"test": entries}))

    report = run_inference(
        {
            **TINY_BUNDLE,
            **weights,
            "input": "$HOME_lists/datalist.json",
            "output_dir": str(tmp_path / "out"),
            "methods": ["gradient"],
            "tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}",
        }
    )
    assert not (tmp_path / MARKER).exists()
    assert report.problems == []
    assert _sources(tmp_path / "out") == sorted(str(lists / name) for name in (PAYLOAD, HASH_NAME))


def test_pyfunc_model_packs_weights_from_any_folder_and_takes_row_names_as_names(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the registry's artifacts land in ./mlruns
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    overrides = {key: value for key, value in {**TINY_BUNDLE, **tiny_weights}.items() if key != "device"}
    version = register_explainer("tiny", uri, methods=["gradient"], overrides=overrides)
    assert version.name == "tiny"
    row = {**encode_image_file(_scan(tmp_path / "scan.nii.gz")), "name": PAYLOAD}

    model = mlflow.pyfunc.load_model(version.source)  # the registered model's files
    result = model.predict(pd.DataFrame([row]))
    assert result.loc[0, "error"] == "" and result.loc[0, "name"] == PAYLOAD
    assert np.asarray(result.loc[0, "gradient"]).shape == (32, 32)
    assert not (tmp_path / MARKER).exists()


class _Collector:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, paths) -> None:
        self.sent += [pydicom.dcmread(path) for path in paths]


def test_node_spool_folder_and_experiment_name_are_data(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    instance = tmp_path / "instance.dcm"
    pixels = brain_like((36, 40)).astype(np.uint16)
    write_mr_slice(pixels, MRSliceGeometry((0.0, 0.0, 5.0)), SyntheticPatient("INJ-TEST", "INJ^TEST"), instance)
    tracking = f"sqlite:///{tmp_path / 'node.db'}"
    # evaluated, this would make the marker, then fail
    experiment = f"$__import__('pathlib').Path('{MARKER}').touch() or node"
    sink = _Collector()
    overrides = {**TINY_BUNDLE, **weights, "methods": ["medxgan"]}
    processor = ExplanationProcessor(
        Spool(tmp_path / "spool#1"), sink, overrides, tracking_uri=tracking, experiment_name=experiment
    )
    assert processor.accept(pydicom.dcmread(instance)) is None
    assert processor.process_pending() == 1
    processor.close()
    assert not (tmp_path / MARKER).exists()
    assert processor.statistics.explained == 1 and len(sink.sent) == 1
    assert MlflowClient(tracking_uri=tracking).get_experiment_by_name(experiment) is not None


def test_bundle_root_with_config_syntax_is_a_folder(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bundle = tmp_path / "$HOME_bundle#1"
    shutil.copytree(BUNDLE_ROOT / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    bundle_weights = {"classifier_ckpt": "model.pt", "generator_ckpt": "generator.pt", "encoder_ckpt": "encoder.pt"}
    for key, name in bundle_weights.items():
        shutil.copy(weights[key], bundle / "models" / name)
    tiny = {key: value for key, value in {**TINY_BUNDLE, **weights}.items() if not key.endswith("_ckpt")}
    inputs = {"input": [_scan(tmp_path / "scan.nii.gz")], "output_dir": str(tmp_path / "out"), "methods": ["gradient"]}
    # the weights and the MLflow database default to places under the bundle's folder
    report = run_inference({**tiny, **inputs}, bundle_root="$HOME_bundle#1")
    assert report.problems == []
    assert (tmp_path / "outputs" / "inference" / "mlruns.db").is_file()


def test_executed_config_records_given_values_plainly(tmp_path):
    from monai.bundle import ConfigWorkflow

    from medxgan_monai.bundle import config_values

    record = tmp_path / "executed.json"
    config = {
        "imports": ["$import medxgan_monai"],
        "input": "default.nii.gz",
        "run": [f"$medxgan_monai.bundle.export_executed_config({str(record)!r})"],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    workflow = ConfigWorkflow(
        config_file=str(tmp_path / "config.json"), logging_file=False, **config_values({"input": [PAYLOAD]})
    )
    workflow.initialize()
    workflow.run()
    assert json.loads(record.read_text())["input"] == [PAYLOAD]
