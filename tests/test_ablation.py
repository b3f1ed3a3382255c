"""The ablation study runner: variants evaluated through the real bundle CLI, resumed, tabulated; training commands."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess

import pytest
from conftest import BUNDLE_ROOT, TINY_BUNDLE
from mlflow.tracking import MlflowClient

from benchmarks.ablation import AblationStudy, ablation_table, main

QUICK = {"perturbation_steps": 4, "randomization_images": 0, "bootstrap_samples": 100, "example_cases": 1}


def _setting(command: list[str], key: str):
    """The value a bundle command passes for ``--key`` (each travels as a config_value literal)."""
    return ast.literal_eval(command[command.index(f"--{key}") + 1])["given"][0]


def _study_file(tmp_path) -> str:
    study = {
        "trainings": {
            "tiny": {"config_files": ["bundle/configs/train_gan.json"], "overrides": {"train#trainer#max_epochs": 1}},
            "never_trained": {"config_files": ["bundle/configs/train_gan.json"]},
        },
        "variants": [
            {"name": "trained", "training": "tiny", "methods": ["medxgan_ig", "gradient"]},
            {"name": "unrefined", "overrides": {"counterfactual_steps": 0}, "methods": ["medxgan_ig"]},
            {"name": "missing", "training": "never_trained", "methods": ["medxgan"]},
        ],
    }
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    return str(path)


def test_study_evaluates_variants_with_the_bundle_resumes_and_tabulates(tiny_demo, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(BUNDLE_ROOT.parent)  # the study's config paths are relative to the repository
    output_dir = tmp_path / "ablation"
    models = output_dir / "trainings" / "tiny" / "models"
    models.mkdir(parents=True)
    shutil.copy(weights["generator_ckpt"], models / "generator.pt")
    shutil.copy(weights["encoder_ckpt"], models / "encoder.pt")
    settings = [f"{key}={json.dumps(value)}" for key, value in {**TINY_BUNDLE, **QUICK}.items()]
    settings += [f"classifier_ckpt={json.dumps(weights['classifier_ckpt'])}", f"image_size={weights['image_size']}"]
    # the untrained variant uses the "shipped" weights: here the tiny ones
    settings += [f"{key}={json.dumps(weights[key])}" for key in ("generator_ckpt", "encoder_ckpt")]
    arguments = ["--study", _study_file(tmp_path), "--output-dir", str(output_dir)]
    arguments += ["--datalist", str(tiny_demo / "datalist.json"), "--set", *settings]

    assert main(arguments) == 0
    table = (output_dir / "ablation.md").read_text()
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| trained", "medxgan_ig"],
        ["| trained", "gradient"],
        ["| unrefined", "medxgan_ig"],
    ], "one row per evaluated variant and method; the variant without weights is left out"
    cells = rows[0].split(" | ")
    assert all("[" in cell for cell in cells[3:6]), "means with 95% CIs for the localization metrics"
    assert "[" in cells[7] and float(cells[8].strip(" |")) > 0, "deletion AUC with its CI, milliseconds per image"
    # the untrained tiny classifier detects no positive, so no counterfactual can be valid or invalid
    assert cells[6] == "-" and rows[1].split(" | ")[6] == "-"
    assert (output_dir / "trained" / "metrics_summary.csv").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medxgan_evaluation").experiment_id])
    assert {run.info.run_name for run in runs} == {"ablation_trained", "ablation_unrefined"}
    trained = next(run for run in runs if run.info.run_name == "ablation_trained")
    assert trained.data.params["generator_ckpt"] == str(models / "generator.pt")
    assert trained.data.params["counterfactual_steps"] == "2"
    unrefined = next(run for run in runs if run.info.run_name == "ablation_unrefined")
    assert unrefined.data.params["counterfactual_steps"] == "0"

    # resumed: nothing is evaluated again, and without --train the missing GAN is reported, not trained
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    assert main(arguments) == 0
    assert calls == []
    assert main([*arguments, "--train", "--variants", "missing"]) == 0
    training, evaluation_of_missing = calls  # trained first, then evaluated with the training's weights
    assert _setting(evaluation_of_missing, "run_name") == "ablation_missing"
    assert training[training.index("--config_file") + 1] == "['bundle/configs/train_gan.json']"
    assert _setting(training, "output_dir") == str(output_dir / "trainings" / "never_trained")
    evaluation = AblationStudy.from_file(_study_file(tmp_path), output_dir=output_dir)
    command = evaluation.evaluation_command(evaluation.select(["unrefined"])[0])
    assert _setting(command, "counterfactual_steps") == 0
    assert _setting(command, "methods") == ["medxgan_ig"]


def test_study_rejects_unknown_names(tmp_path):
    path = _study_file(tmp_path)
    study = AblationStudy.from_file(path, output_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown variants"):
        study.select(["nope"])
    spec = json.loads((tmp_path / "study.json").read_text())
    spec["variants"][0]["training"] = "absent"
    (tmp_path / "study.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="unknown trainings"):
        AblationStudy.from_file(path, output_dir=tmp_path)
    assert ablation_table([]).count("\n") == 2
