"""The inference bundle end to end on tiny networks: source geometry, DICOM outputs, bad inputs, the CLI."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import BUNDLE_ROOT, TINY_BUNDLE, brain_like
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigWorkflow

from medxgan_monai.cli.explain import main as explain_main
from medxgan_monai.handlers import InferenceFailed
from medxgan_monai.io import MRSliceGeometry, OutputLedger, SyntheticPatient, write_mr_slice

CONFIGS = BUNDLE_ROOT / "configs"


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    good, bad = folder / "good", folder / "bad"
    good.mkdir()
    bad.mkdir()
    # non-square, anisotropic, oblique NIfTI slice stored with a singleton third axis
    affine = np.array([[0.0, -0.7, 0.1, 20.0], [1.3, 0.0, 0.0, -31.5], [0.0, 0.05, 3.0, 7.25], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(brain_like((40, 56, 1)), affine), good / "oblique.nii.gz")
    nib.save(nib.Nifti1Image(brain_like((48, 36), seed=1), np.diag([0.9, 1.1, 1.0, 1.0])), good / "plain.nii")
    write_mr_slice(
        brain_like((36, 48), seed=2).astype(np.uint16),
        MRSliceGeometry((10.0, -20.0, 5.0), pixel_spacing=(0.8, 1.2)),
        SyntheticPatient("TEST-1", "TEST^ONE"),
        good / "slice.dcm",
    )
    (bad / "garbage.nii.gz").write_bytes(b"not a nifti file")
    nib.save(nib.Nifti1Image(np.full((32, 32), 7.0, np.float32), np.eye(4)), bad / "constant.nii.gz")
    nib.save(nib.Nifti1Image(brain_like((32, 32)) * np.nan, np.eye(4)), bad / "nan.nii.gz")
    nib.save(nib.Nifti1Image(brain_like((4, 4)), np.eye(4)), bad / "tiny.nii.gz")
    nib.save(nib.Nifti1Image(brain_like((16, 16, 16)), np.eye(4)), bad / "volume.nii.gz")
    return folder


def _workflow(inputs, output_dir, weights, **extra) -> ConfigWorkflow:
    return ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(BUNDLE_ROOT),
        input=[str(p) for p in inputs],
        output_dir=str(output_dir),
        tracking_uri=f"sqlite:///{output_dir.parent / 'mlruns.db'}",
        **{**TINY_BUNDLE, **weights},
        **extra,
    )


def _rows(path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_outputs_keep_the_source_geometry_and_bad_inputs_are_reported(scans, weights, tmp_path):
    out = tmp_path / "out"
    workflow = _workflow([scans / "good", scans / "bad"], out, weights)
    workflow.initialize()
    with pytest.raises(RuntimeError) as failure:
        workflow.run()
    assert isinstance(failure.value.__cause__, InferenceFailed)

    errors = {row["stem"]: row["problem"] for row in _rows(out / "errors.csv")}
    assert set(errors) == {"garbage", "constant", "nan", "tiny"}
    assert "NaN" in errors["nan"] and "constant" in errors["constant"]
    predictions = [row for row in _rows(out / "predictions.csv") if row["slice"] == ""]
    assert {row["stem"] for row in predictions} == {"oblique", "plain", "slice", "volume"}, "a 3D NIfTI is a volume"
    assert all(float(row["seconds_medxgan"]) > 0 for row in predictions if row["stem"] != "volume")
    assert all(0 <= float(row["residual_counterfactual_probability"]) <= 1 for row in predictions)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_inference").experiment_id])
    assert run.data.metrics["explained"] == 4 and run.data.metrics["failed"] == 4
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"predictions.csv", "errors.csv"}

    methods = ("medxgan_ig", "medxgan", "medxgan_lig", "gradcam", "ig", "gradient", "occlusion", "latentshift")
    methods += ("counterfactual", "residual_counterfactual")
    for stem in ("oblique", "plain"):
        source = nib.load(next((scans / "good").glob(f"{stem}.nii*")))
        for method in methods:
            output = nib.load(out / f"{stem}_{method}.nii.gz")
            assert output.shape == source.shape, (stem, method)
            assert np.array_equal(output.affine, source.affine), (stem, method)
            assert np.isfinite(output.get_fdata()).all()
        assert (out / f"{stem}_panel.png").is_file() and (out / f"{stem}_sweep.gif").is_file()

    source = pydicom.dcmread(scans / "good" / "slice.dcm")
    saliency = nib.load(out / "slice_medxgan.nii.gz")
    assert saliency.shape == (source.Columns, source.Rows)  # MONAI's (x, y) order of the DICOM grid
    for name in ("slice_overlay_sc.dcm", "slice_medxgan_ig_pm.dcm"):
        derived = pydicom.dcmread(out / name)
        assert derived.StudyInstanceUID == source.StudyInstanceUID
        assert derived.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert derived.SeriesInstanceUID != source.SeriesInstanceUID
        assert "NOT FOR CLINICAL USE" in derived.SeriesDescription
        assert (derived.Rows, derived.Columns) == (source.Rows, source.Columns)
    overlay = pydicom.dcmread(out / "slice_overlay_sc.dcm")
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    parametric = pydicom.dcmread(out / "slice_medxgan_ig_pm.dcm")
    assert parametric.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert parametric.pixel_array.shape == (source.Rows, source.Columns)


def test_existing_outputs_are_not_overwritten(scans, weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "plain_gradcam.nii.gz").write_bytes(b"the user's file")
    workflow = _workflow([scans / "good" / "plain.nii"], out, weights, methods=["gradcam"])
    workflow.initialize()
    with pytest.raises(RuntimeError):
        workflow.run()
    assert (out / "plain_gradcam.nii.gz").read_bytes() == b"the user's file"
    assert "exists" in _rows(out / "errors.csv")[0]["problem"]


def test_command_line_exit_status(scans, tmp_path, capsys):
    assert explain_main([str(tmp_path / "missing.nii.gz"), "--output", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_interrupted_run_resumes_without_redoing_or_losing_work(scans, weights, tmp_path, monkeypatch):
    out = tmp_path / "out"
    commit, calls = OutputLedger.commit, []

    def crash_during_second_commit(ledger, stem, row):
        calls.append(stem)
        if len(calls) < 2:
            return commit(ledger, stem, row)
        # the process dies after the pending record is written and two of the item's files were moved into place
        staged = sorted((ledger.root / "staging" / stem).iterdir())
        ledger._write(stem, "pending", {"files": [path.name for path in staged]})
        for path in staged[:2]:
            os.replace(path, out / path.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputLedger, "commit", crash_during_second_commit)
    workflow = _workflow([scans / "good"], out, weights)
    workflow.initialize()
    with pytest.raises(KeyboardInterrupt):
        workflow.run()
    finished, interrupted = calls
    monkeypatch.setattr(OutputLedger, "commit", commit)
    first_output = (out / f"{finished}_gradcam.nii.gz").read_bytes()

    workflow = _workflow([scans / "good"], out, weights)
    workflow.initialize()
    workflow.run()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medxgan_inference").experiment_id])
    resumed = max(runs, key=lambda run: run.info.start_time)
    assert resumed.data.metrics["already_complete"] == 1 and resumed.data.metrics["explained"] == 2
    assert {row["stem"] for row in _rows(out / "predictions.csv")} == {"oblique", "plain", "slice"}
    assert (out / f"{finished}_gradcam.nii.gz").read_bytes() == first_output, "complete items are not redone"
    for stem in ("oblique", "plain", "slice"):
        assert OutputLedger(out).completed(stem) is not None, stem
        assert nib.load(out / f"{stem}_medxgan.nii.gz").get_fdata().size > 0
    ledger_files = {path.name for path in (out / ".medxgan_ledger").rglob("*") if path.is_file()}
    ledger_files -= {"run.lock", "run_files.json"}  # the folder's lock and the manifest of the run's own CSV files
    assert ledger_files == {f"{stem}.done.json" for stem in ("oblique", "plain", "slice")}, "no staging or pending"
    assert interrupted in {"oblique", "plain", "slice"} - {finished}

    workflow = _workflow([scans / "good"], out, weights, overwrite=True)
    workflow.initialize()
    workflow.run()
    runs = client.search_runs([client.get_experiment_by_name("medxgan_inference").experiment_id])
    assert max(runs, key=lambda run: run.info.start_time).data.metrics["explained"] == 3, "--overwrite redoes all"


def test_report_times_only_this_runs_explanations_but_lists_every_row(tmp_path):
    from medxgan_monai.handlers import InferenceReport

    earlier = {
        "stem": "a",
        "source": "a.nii",
        "probability": "0.9",
        "predicted_label": 1,
        "counterfactual_probability": "",
    }
    report = InferenceReport(tmp_path, completed=[{**earlier, "seconds": {"ig": 0.1}}])
    report.predictions.append({**earlier, "stem": "b", "seconds": {"gradient": 0.01}})
    summary = report.summary()
    assert summary["seconds_gradient"] == 0.01 and "seconds_ig" not in summary, "a resumed row was timed earlier"
    report.write()
    assert [row["stem"] for row in _rows(tmp_path / "predictions.csv")] == ["a", "b"]
    assert {"seconds_ig", "seconds_gradient"} <= set(_rows(tmp_path / "predictions.csv")[0])


def test_only_the_configured_writers_run_and_gradcam_alone_loads_no_generator(scans, weights, tmp_path, monkeypatch):
    """``writers`` in the config chooses the output kinds; ``--methods gradcam`` loads neither generator nor encoder."""
    import medxgan_monai.bundle

    loaded = []
    original = medxgan_monai.bundle.load_weights

    def recording_load(module, path, *args, **kwargs):
        loaded.append(path)
        return original(module, path, *args, **kwargs)

    monkeypatch.setattr(medxgan_monai.bundle, "load_weights", recording_load)  # what inference.json calls
    out = tmp_path / "out"
    writers = [{"_target_": "medxgan_monai.io.explanation_outputs.NiftiMapWriter"}]
    workflow = _workflow([scans / "good" / "oblique.nii.gz"], out, weights, methods=["gradcam"], writers=writers)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert loaded == [], "no generator or encoder weights are loaded for gradcam alone"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "oblique_gradcam.nii.gz",
        "predictions.csv",
    ]
    (row,) = _rows(out / "predictions.csv")
    assert row["counterfactual_probability"] == row["residual_counterfactual_probability"] == ""


def test_the_output_geometry_travels_with_the_image(scans, tmp_path):
    """The loader records the affine and shape the outputs are written with; writers never re-open the source."""
    import shutil

    from medxgan_monai.io.nifti import output_geometry
    from medxgan_monai.transforms import load_scan

    source = tmp_path / "oblique.nii.gz"
    shutil.copy(scans / "good" / "oblique.nii.gz", source)
    expected = nib.load(source)
    image = load_scan(source)
    source.unlink()  # gone: the geometry must come from the metadata
    affine, shape = output_geometry(image.meta)
    assert np.array_equal(affine, expected.affine) and shape == expected.shape == (40, 56, 1)
    affine, shape = output_geometry(load_scan(scans / "good" / "slice.dcm").meta)
    assert shape is None and np.isfinite(affine).all()


def test_a_handler_listed_before_the_explanation_handler_fails_saying_so(tmp_path):
    """The order of handlers is a checked contract: the writer and the scorer read the ExplanationHandler's results."""
    from types import SimpleNamespace

    from medxgan_monai.handlers import ExplanationScorer, ExplanationWriter, InferenceReport

    report = InferenceReport(tmp_path / "out")
    engine = SimpleNamespace(state=SimpleNamespace(output={}, batch={}, iteration=1))
    for handler in (
        ExplanationWriter(tmp_path / "out", preprocessing=None, report=report),
        ExplanationScorer(linear_classifier(), report),
    ):
        with pytest.raises(RuntimeError, match="after the ExplanationHandler"):
            handler(engine)


def linear_classifier():
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_a_warm_pipeline_reads_the_weights_once_and_explains_every_run(scans, weights, tmp_path, monkeypatch):
    """The DICOM node's pipeline: the networks and their weights are built by the first run and reused by the next;
    each run still writes its own outputs and report."""
    import torch

    from medxgan_monai.bundle import InferencePipeline

    loaded = []
    original = torch.load

    def recording_load(path, *args, **kwargs):
        loaded.append(os.path.basename(str(path)))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    fixed = {**TINY_BUNDLE, **weights, "methods": ["medxgan_ig", "gradient"]}
    fixed["tracking_uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    pipeline = InferencePipeline(fixed, BUNDLE_ROOT)
    first = pipeline.run({"input": [str(scans / "good" / "plain.nii")], "output_dir": str(tmp_path / "a")})
    weight_files = sorted(loaded)
    assert len(weight_files) == 3, "classifier, generator and encoder"
    second = pipeline.run({"input": [str(scans / "good" / "slice.dcm")], "output_dir": str(tmp_path / "b")})
    assert sorted(loaded) == weight_files, "the second run reads no weights"
    assert not first.problems and not second.problems
    assert (tmp_path / "a" / "plain_medxgan_ig.nii.gz").exists() and (tmp_path / "b" / "slice_gradient.nii.gz").exists()
    (row,) = _rows(tmp_path / "b" / "predictions.csv")
    assert row["stem"] == "slice" and 0 <= float(row["probability"]) <= 1
    with pytest.raises(ValueError, match="fixed for this pipeline"):
        pipeline.run({"methods": ["gradcam"], "input": [str(scans / "good" / "plain.nii")]})
    with pytest.raises(ValueError, match="built by the pipeline"):
        InferencePipeline({"explainers": None})


def test_a_run_without_tracking_or_overlay_writes_neither(scans, weights, tmp_path, monkeypatch):
    """``tracking_uri None``: no MLflow run anywhere; ``dicom_overlay false``: the Parametric Map, no overlay."""
    from medxgan_monai.bundle import run_inference

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = {**TINY_BUNDLE, **weights, "methods": ["gradient"], "tracking_uri": None, "dicom_overlay": False}
    report = run_inference({**overrides, "input": [str(scans / "good" / "slice.dcm")], "output_dir": "out"})
    assert not report.problems
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".dcm")
    assert written == ["slice_gradient_pm.dcm"]
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "mlruns").exists(), "no MLflow store was made"


def test_inference_batches_grow_so_that_the_first_image_is_not_kept_waiting():
    from medxgan_monai.bundle import inference_config
    from medxgan_monai.data import GrowingBatchSampler

    assert [len(batch) for batch in GrowingBatchSampler(20, 8)] == [1, 2, 4, 8, 5]
    assert [index for batch in GrowingBatchSampler(20, 8) for index in batch] == list(range(20))
    assert [len(batch) for batch in GrowingBatchSampler(3, 1)] == [1, 1, 1]
    assert len(GrowingBatchSampler(0, 8)) == 0 and len(GrowingBatchSampler(5, 8, first_batch_size=4)) == 2
    with pytest.raises(ValueError, match="batch sizes"):
        GrowingBatchSampler(5, 0)
    config = inference_config(BUNDLE_ROOT)
    assert config["batch_size"] == 8
    assert config["dataloader"]["batch_sampler"]["_target_"].endswith("GrowingBatchSampler")
