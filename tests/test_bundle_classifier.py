"""The classifier bundle end to end on a tiny datalist: properties, training, evaluation, MLflow, metadata."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import BUNDLE_ROOT
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out

CONFIGS = BUNDLE_ROOT / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")


def _overrides(tiny_demo, output_dir):
    return {
        "bundle_root": str(BUNDLE_ROOT),
        "dataset_dir": str(tiny_demo),
        "output_dir": str(output_dir),
        "image_size": [32, 32],
        "batch_size": 8,
        "device": "cpu",
        "train#trainer#max_epochs": 1,
    }


def _run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    workflow.check_properties()  # raises KeyError for a missing required property
    workflow.run()
    workflow.finalize()


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory, monkeypatch_module):
    output_dir = tmp_path_factory.mktemp("classifier")
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train_classifier.json"),
        meta_file=META,
        logging_file=LOGGING,
        **_overrides(tiny_demo, output_dir),
    )
    _run(workflow)
    return output_dir


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield patch


def test_training_writes_the_best_checkpoint(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert any(key.endswith("class_layers.out.weight") for key in state)


def test_training_run_is_in_the_sqlite_mlflow_database(trained):
    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("medxgan_classifier")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"train_loss", "val_auc", "val_accuracy"} <= set(run.data.metrics)
    assert run.data.params["network"] == "DenseNet" and run.data.params["batch_size"] == "8"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.pt" in artifacts and any(p.startswith("config_train_classifier") for p in artifacts)
    executed = json.loads(next(trained.glob("config_train_classifier_*.json")).read_text())
    assert executed["train"]["trainer"]["max_epochs"] == 1  # the override, not the file's value


def test_evaluation_writes_metrics_and_confusion_matrix(trained, tiny_demo):
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=[str(CONFIGS / "train_classifier.json"), str(CONFIGS / "evaluate_classifier.json")],
        meta_file=META,
        logging_file=LOGGING,
        ckpt_path=str(trained / "models" / "model.pt"),
        **_overrides(tiny_demo, trained),
    )
    _run(workflow)
    eval_dir = next(trained.glob("eval_evaluate_classifier_*"))
    metrics = dict(csv.reader(open(eval_dir / "metrics.csv"), delimiter=","))
    assert {"test_auc", "test_accuracy", "test_sensitivity", "test_specificity"} <= set(metrics)
    assert 0.0 <= float(metrics["test_auc"]) <= 1.0
    rows = list(csv.reader(open(eval_dir / "confusion_matrix.csv")))
    assert rows[0] == ["true \\ predicted", "negative", "positive"]
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 8
    assert len(list(csv.reader(open(eval_dir / "predictions.csv")))) == 8
    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("medxgan_classifier")
    evaluation = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name.startswith("evaluate")]
    assert len(evaluation) == 1 and "test_auc" in evaluation[0].data.metrics


def test_tracking_uri_environment_variable_wins(tiny_demo, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train_classifier.json"),
        meta_file=META,
        logging_file=LOGGING,
        **_overrides(tiny_demo, tmp_path / "out"),
    )
    workflow.initialize()
    assert workflow.parser.get_parsed_content("tracking_uri") == f"sqlite:///{elsewhere}"


def test_bad_datalist_fails_before_training_and_names_the_file(tiny_demo, tmp_path):
    datalist = json.loads((tiny_demo / "datalist.json").read_text())
    datalist["training"][0]["image"] = str(tiny_demo / "images" / "missing.nii.gz")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(datalist))
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train_classifier.json"),
        meta_file=META,
        logging_file=LOGGING,
        datalist=str(broken),
        **_overrides(tiny_demo, tmp_path / "out"),
    )
    with pytest.raises(RuntimeError) as error:
        workflow.initialize()
    assert "missing.nii.gz: file does not exist" in str(error.value.__cause__)
    assert not (tmp_path / "out" / "models" / "model.pt").exists()


def test_metadata_verifies_offline_against_the_repository_schema():
    verify_metadata(meta_file=META, filepath=str(BUNDLE_ROOT / "schema" / "meta_schema_20240725.json"))


def test_network_matches_its_declared_inputs_and_outputs():
    verify_net_in_out(
        net_id="network_def", meta_file=META, config_file=str(CONFIGS / "train_classifier.json"), device="cpu"
    )


def test_shipped_weights_load_into_the_default_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_classifier.json"))
    network = parser.get_parsed_content("network_def")
    shipped = BUNDLE_ROOT / "models" / "model.pt"
    assert shipped.stat().st_size < 25 * 1024 * 1024
    network.load_state_dict(torch.load(shipped, weights_only=True))
    network.eval()
    with torch.no_grad():
        assert network(torch.rand(2, 1, 64, 64)).shape == (2, 2)
