"""The evaluation bundle end to end on a tiny datalist: per-image and summary metrics, report files, MLflow, bad
entries, DICOM images and a model resolution different from the sources'."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import evaluation_workflow, save_tiny_weights
from mlflow.tracking import MlflowClient

from medxgan_monai.handlers import InferenceFailed
from medxgan_monai.handlers.evaluation import METRICS

METHODS = ["medxgan_ig", "medxgan", "medxgan_lig", "gradcam", "ig", "gradient", "occlusion", "latentshift"]
QUICK = {"perturbation_steps": 4, "randomization_images": 2, "bootstrap_samples": 200, "example_cases": 2}


def _evaluate(datalist, output_dir, weights, **extra):
    return evaluation_workflow(datalist, output_dir, weights, **{**QUICK, **extra})


def _rows(path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _positives(datalist) -> list[str]:
    return [item["image"] for item in json.loads(datalist.read_text())["test"] if item["label"] == 1]


def test_every_metric_for_every_method_with_report_mlflow_and_bad_entries(tiny_demo, weights, tmp_path):
    # a damaged copy: one positive loses its mask, one positive's image is not an image
    demo = tmp_path / "demo"
    shutil.copytree(tiny_demo, demo)
    content = json.loads((demo / "datalist.json").read_text())
    positives = [item for item in content["test"] if item["label"] == 1]
    del positives[0]["mask"]
    (demo / positives[1]["image"]).write_bytes(b"not a scan")
    (demo / "datalist.json").write_text(json.dumps(content))
    out = tmp_path / "out"

    with pytest.raises(RuntimeError) as failure:
        _evaluate(demo / "datalist.json", out, weights).run()
    assert isinstance(failure.value.__cause__, InferenceFailed), "skipped entries give a non-zero exit status"

    errors = {row["stem"]: row["problem"] for row in _rows(out / "errors.csv")}
    first, second = (item["image"].split("/")[-1].split(".")[0] for item in positives[:2])
    assert set(errors) == {first, second}
    assert "mask" in errors[first] and second in errors and errors[second]

    rows = _rows(out / "metrics_per_image.csv")
    scored = {row["stem"] for row in rows}
    assert len(scored) == len(positives) - 2 and {first, second}.isdisjoint(scored)
    for stem in scored:  # one row per image and method, in the methods' order (rows come batch by batch)
        assert [row["method"] for row in rows if row["stem"] == stem] == METHODS, stem
    for row in rows:
        assert row["label"] == "1" and 0 <= float(row["probability"]) <= 1
        for metric in ("pointing_game", "relevance_mass", "top_k_iou", "pixel_auroc", "otsu_iou"):
            assert 0 <= float(row[metric]) <= 1, (row["method"], metric)
        assert 0 <= float(row["deletion_auc"]) <= 1 and 0 <= float(row["insertion_auc"]) <= 1
        validity = row["counterfactual_validity"]
        if row["method"].startswith("medxgan") and float(row["probability"]) >= 0.5:
            assert validity in ("0", "1")
        else:
            assert validity == "", "validity applies to medXGAN counterfactuals of images called positive"
        if row["method"] in ("ig", "medxgan_ig", "medxgan_lig"):
            assert 0 <= float(row["completeness_gap"]) < 1, "IG-type maps report their completeness gap"
        else:
            assert row["completeness_gap"] == ""

    summary = _rows(out / "metrics_summary.csv")
    assert {(r["method"], r["metric"]) for r in summary} == {
        (m, k) for m in METHODS for k in [*METRICS, "completeness_gap", "seconds"]
    }
    for row in summary:
        if row["n"] != "0":
            assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
    detected = {r["stem"] for r in rows if float(r["probability"]) >= 0.5}
    for row in _rows(out / "metrics_summary_detected.csv"):
        per_image = [r for r in rows if r["method"] == row["method"] and r["stem"] in detected]
        if row["metric"] == "pointing_game":
            assert int(row["n"]) == len(per_image), "only images the classifier calls positive"
            if per_image:
                expected = sum(float(r["pointing_game"]) for r in per_image) / len(per_image)
                assert float(row["mean"]) == pytest.approx(expected, abs=1e-5)
    markdown = (out / "summary.md").read_text()
    assert all(f"| {method} |" in markdown for method in METHODS) and "Randomization sanity test" in markdown
    assert "top-|GT|" not in markdown and "top-\\|GT\\| IoU" in markdown, "a | in a heading would split its cell"
    completeness = markdown.split("### Completeness of the Integrated Gradients maps")[1].split("#")[0]
    reported = {line.split(" | ")[0].strip("| ") for line in completeness.splitlines() if line.startswith("| ")}
    assert reported == {"method", "ig", "medxgan_ig", "medxgan_lig"}, "the IG-type maps, and only they"
    assert f"{len(detected)} of the " in markdown and "Positives the classifier detects" in markdown
    for name in ("metrics.png", "randomization.png", *(f"examples_{m}.png" for m in METHODS)):
        assert (out / name).stat().st_size > 1000, name
    randomization = _rows(out / "randomization.csv")
    layers = {row["layer"] for row in randomization}
    assert "class_layers.out" in layers and len(randomization) == len(METHODS) * len(layers)
    assert all(-1 <= float(row["mean_spearman"]) <= 1 for row in randomization)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_evaluation").experiment_id])
    ig_pointing = next(r for r in summary if r["method"] == "ig" and r["metric"] == "pointing_game")
    assert math.isclose(run.data.metrics["ig_pointing_game"], float(ig_pointing["mean"]), rel_tol=1e-5)
    assert run.data.metrics["failed"] == 2 and run.data.params["section"] == "test"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.md", "metrics_per_image.csv", "metrics_summary.csv", "metrics.png"} <= artifacts


def test_dicom_images_score_like_their_nifti_twins_at_another_model_resolution(tiny_demo, tmp_path):
    weights = save_tiny_weights(tmp_path / "weights", size=24)  # sources are 32 pixels
    options = {"methods": ["gradient", "gradcam"], "randomization_images": 0}
    nifti, dicom = tmp_path / "nifti" / "out", tmp_path / "dicom" / "out"
    _evaluate(tiny_demo / "datalist.json", nifti, weights, **options).run()
    _evaluate(tiny_demo / "datalist_dicom.json", dicom, weights, **options).run()
    assert len(_positives(tiny_demo / "datalist_dicom.json")) == len(
        {r["stem"] for r in _rows(dicom / "metrics_per_image.csv")}
    )
    by_key = {(r["stem"], r["method"]): r for r in _rows(nifti / "metrics_per_image.csv")}
    for row in _rows(dicom / "metrics_per_image.csv"):
        twin = by_key[(row["stem"], row["method"])]
        for metric in ("pointing_game", "relevance_mass", "top_k_iou", "pixel_auroc"):
            # the DICOM copy is quantised to 16 bits; masks and geometry must line up exactly as for the NIfTI
            assert np.isclose(float(row[metric]), float(twin[metric]), atol=0.05), (row["stem"], metric)
    assert not (dicom / "randomization.csv").exists() and "Randomization" not in (dicom / "summary.md").read_text()
