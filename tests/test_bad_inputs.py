"""A corpus of bad inputs through training-datalist validation, inference and evaluation: each gives a clear error
naming the file, the good inputs beside them are processed, nothing is overwritten; and no patient identifier
reaches MLflow, the logs or the non-DICOM outputs."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import BUNDLE_ROOT, TINY_BUNDLE, brain_like
from monai.bundle import ConfigWorkflow
from pydicom.data import get_testdata_file

from medxgan_monai.data import DatalistError, validate_datalist
from medxgan_monai.handlers import InferenceFailed
from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice

CONFIGS = BUNDLE_ROOT / "configs"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _nifti(array, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


def _huge_dicom(path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 30000
    ds.save_as(path)


#: kind -> (file name, how to make it, words the error must contain)
CORPUS = {
    "truncated nifti": (
        "truncated.nii.gz",
        lambda p: p.write_bytes((NIBABEL_DATA / "example4d.nii.gz").read_bytes()[:300]),
        "cannot read as nifti",
    ),
    "truncated dicom": (
        "truncated.dcm",
        lambda p: p.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:2000]),
        "no pixel data (truncated",
    ),
    "truncated dicom pixels": (
        "short_pixels.dcm",
        lambda p: shutil.copy(get_testdata_file("MR_truncated.dcm"), p),
        "cannot read as dicom",
    ),
    "not an image": ("notes.nii.gz", lambda p: p.write_bytes(b"plain text, not a scan"), "cannot read as nifti"),
    "unsupported format": ("table.xlsx", lambda p: p.write_bytes(b"PK\x03\x04 zip"), "unsupported format"),
    "empty file": ("empty.nii.gz", lambda p: p.write_bytes(b""), "file is empty"),
    "3D volume": ("volume.nii.gz", lambda p: _nifti(brain_like((16, 16, 16)), p), "expected a 2D image"),
    "4D": ("series.nii.gz", lambda p: shutil.copy(NIBABEL_DATA / "example4d.nii.gz", p), "expected a 2D image"),
    "NaN": ("nan.nii.gz", lambda p: _nifti(brain_like((32, 32)) * np.nan, p), "NaN or infinite"),
    "Inf": (
        "inf.nii.gz",
        lambda p: _nifti(np.where(brain_like((32, 32)) > 500, np.inf, 1.0).astype(np.float32), p),
        "NaN or infinite",
    ),
    "constant": ("constant.nii.gz", lambda p: _nifti(np.full((32, 32), 7.0, np.float32), p), "constant"),
    "too small": ("tiny.nii.gz", lambda p: _nifti(brain_like((4, 4)), p), "below 8 pixels"),
    "very large": ("huge.dcm", _huge_dicom, "exceeds the limit"),
    "multi-frame dicom": ("cine.dcm", lambda p: shutil.copy(get_testdata_file("emri_small.dcm"), p), "multi-frame"),
    "dicom without pixels": ("plan.dcm", lambda p: shutil.copy(get_testdata_file("rtplan.dcm"), p), "no pixel data"),
    "undecodable compression": (
        "lossy12.dcm",
        lambda p: shutil.copy(get_testdata_file("JPEG-lossy.dcm"), p),
        "cannot be decoded by the installed decoders",
    ),
}
# the validator checks files only; screening before inference also rejects unusable content
CONTENT_KINDS = {"constant", "too small"}
# training takes 2D images; inference explains a 3D volume slice by slice
EXPLAINED_AS_VOLUMES = {"3D volume"}
# made from pydicom test files of one series (MR_small, MR_truncated): in one folder, inference reads one series
ONE_SERIES = {"very large", "truncated dicom pixels"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "bad").mkdir()
    for name, make, _ in CORPUS.values():
        make(folder / "bad" / name)
    # two good scans with the same file name in different folders: both must get their own outputs
    for index, sub in enumerate(("site_a", "site_b")):
        (folder / sub).mkdir()
        _nifti(brain_like((40, 36), seed=index), folder / sub / "case.nii.gz")
        mask = np.zeros((40, 36), np.float32)
        mask[10:20, 12:22] = 1
        _nifti(mask, folder / sub / "case_mask.nii.gz")
    return {"root": folder, "bad": {kind: folder / "bad" / spec[0] for kind, spec in CORPUS.items()}}


def _workflow(configs, output_dir, weights, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / name) for name in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(BUNDLE_ROOT),
        output_dir=str(output_dir),
        tracking_uri=f"sqlite:///{output_dir.parent / 'mlruns.db'}",
        **{**TINY_BUNDLE, **weights, **overrides},
    )
    workflow.initialize()
    return workflow


def _errors(folder: Path) -> dict[str, str]:
    with open(folder / "errors.csv", newline="") as stream:
        return {row["source"]: row["problem"] for row in csv.DictReader(stream)}


def test_training_datalist_validation_lists_every_bad_entry(corpus, tmp_path):
    good = str(corpus["root"] / "site_a" / "case.nii.gz")
    entries = [{"image": str(path), "label": i % 2} for i, path in enumerate(corpus["bad"].values())]
    entries += [
        {"image": good, "label": 0},
        {"image": good, "label": 1},
        {"image": good},  # missing label
        {"image": good, "label": 2},  # not binary
        {"image": str(corpus["root"] / "absent.nii.gz"), "label": 0},
        {"image": str(corpus["root"] / "site_a"), "label": 1},  # a folder
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries, "validation": entries[-6:-4]}))
    with pytest.raises(DatalistError) as failure:
        validate_datalist(datalist)
    problems = "\n".join(failure.value.problems)
    for kind, path in corpus["bad"].items():
        if kind not in CONTENT_KINDS:
            assert f"{path}: {CORPUS[kind][2]}" in problems or (
                str(path) in problems and CORPUS[kind][2] in problems
            ), kind
    assert "missing 'label'" in problems and "label must be 0 or 1" in problems
    assert "does not exist" in problems and "is a folder" in problems
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatalistError, match="not valid JSON"):
        validate_datalist(tmp_path / "broken.json")


def test_inference_reports_each_bad_file_and_explains_the_rest(corpus, weights, tmp_path):
    out = tmp_path / "out"
    workflow = _workflow(["inference.json"], out, weights, input=[str(corpus["root"])], methods=["gradient"])
    with pytest.raises(RuntimeError) as failure:
        workflow.run()
    assert isinstance(failure.value.__cause__, InferenceFailed)
    errors = _errors(out)
    for kind, path in corpus["bad"].items():
        if kind in EXPLAINED_AS_VOLUMES:
            assert str(path) not in errors, kind
            continue
        if kind in ONE_SERIES:
            continue
        assert CORPUS[kind][2] in errors[str(path)], (kind, errors.get(str(path)))
    # two files of one SeriesInstanceUID in a folder are read as a series, here one that is no volume
    assert "different image sizes" in errors[str(corpus["root"] / "bad")]
    with open(out / "predictions.csv", newline="") as stream:
        stems = sorted(row["stem"] for row in csv.DictReader(stream) if row["slice"] == "")
    # the masks are images too; the duplicate names get distinct stems
    assert stems == ["case", "case_2", "case_mask", "case_mask_2", "volume"]
    assert (out / "case_gradient.nii.gz").is_file() and (out / "case_2_gradient.nii.gz").is_file()


def test_evaluation_skips_bad_images_and_masks_and_scores_the_rest(corpus, weights, tmp_path):
    root = corpus["root"]
    good = {
        "image": str(root / "site_a" / "case.nii.gz"),
        "label": 1,
        "mask": str(root / "site_a" / "case_mask.nii.gz"),
    }
    test = [good, {**good, "image": str(root / "site_b" / "case.nii.gz")}]
    test += [{"image": str(path), "label": 1, "mask": good["mask"]} for path in corpus["bad"].values()]
    test += [
        {"image": good["image"], "label": 1},  # no mask
        {"image": good["image"], "label": 1, "mask": str(corpus["bad"]["empty file"])},  # unreadable mask
        {"image": good["image"], "label": 0, "mask": good["mask"]},  # a negative: not scored
    ]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": test}))
    out = tmp_path / "out"
    options = {"methods": ["gradient"], "randomization_images": 0, "perturbation_steps": 2, "bootstrap_samples": 50}
    with pytest.raises(RuntimeError):
        _workflow(["inference.json", "evaluate.json"], out, weights, datalist=str(datalist), **options).run()
    with open(out / "errors.csv", newline="") as stream:
        problems = [row["problem"] for row in csv.DictReader(stream)]
    assert len(problems) == len(corpus["bad"]) + 2
    assert any("no 'mask'" in p for p in problems) and any("file is empty" in p for p in problems)
    with open(out / "metrics_per_image.csv", newline="") as stream:
        assert sorted(row["stem"] for row in csv.DictReader(stream)) == ["case", "case_2"]


def test_an_unwritable_output_folder_fails_before_any_work(corpus, weights, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(Exception) as failure:
        _workflow(["inference.json"], blocker / "out", weights, input=[str(corpus["root"] / "site_a")]).run()
    assert "not writable" in str(failure.value) or "not writable" in str(failure.value.__cause__)


PLANTED = {
    "PatientName": "Planted^Person",
    "PatientID": "PID-PLANTED-4711",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "ACC-PLANTED-0815",
}


def test_no_patient_identifier_reaches_tracking_logs_or_non_dicom_outputs(weights, tmp_path, caplog, capfd):
    scans = tmp_path / "scans"
    scans.mkdir()
    for index in range(2):
        path = scans / f"slice_{index}.dcm"
        patient = SyntheticPatient(
            PLANTED["PatientID"], PLANTED["PatientName"], accession_number=PLANTED["AccessionNumber"]
        )
        write_mr_slice(
            brain_like((36, 40), seed=index).astype(np.uint16), MRSliceGeometry((0.0, 0.0, index)), patient, path
        )
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = PLANTED["PatientBirthDate"]
        ds.save_as(path)
    mask = np.zeros((40, 36), np.float32)
    mask[10:20, 12:22] = 1
    _nifti(mask, scans / "mask.nii.gz")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "test": [
                    {"image": str(p), "label": 1, "mask": str(scans / "mask.nii.gz")}
                    for p in sorted(scans.glob("*.dcm"))
                ]
            }
        )
    )

    caplog.set_level(logging.DEBUG)
    runs = tmp_path / "runs"
    _workflow(["inference.json"], runs / "inference", weights, input=[str(scans)]).run()
    evaluation = {"randomization_images": 1, "perturbation_steps": 2, "bootstrap_samples": 50}
    _workflow(
        ["inference.json", "evaluate.json"], runs / "evaluation", weights, datalist=str(datalist), **evaluation
    ).run()
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err

    derived = sorted((runs / "inference").glob("*.dcm"))
    assert derived and all(pydicom.dcmread(p).PatientID == PLANTED["PatientID"] for p in derived), (
        "the derived DICOM series keep the patient's identity, as the standard expects"
    )
    searched = [p for p in runs.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert any(p.name == "mlruns.db" for p in searched) and any(
        "artifacts" in str(p) or "mlruns" in str(p) for p in searched
    )
    for value in PLANTED.values():
        assert value not in logs, value
        for path in searched:
            content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert value.encode() not in content, (value, path)
            assert value not in str(path), (value, path)
    # the comparison above is exact: also catch DICOM's caret-free spelling of the name
    assert "Planted Person" not in logs


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def test_checkpoints_that_would_run_code_are_refused(tmp_path):
    import torch
    from monai.networks.nets import DenseNet

    from medxgan_monai.bundle import load_weights
    from medxgan_monai.networks import FrozenClassifier

    path = tmp_path / "malicious.pt"
    torch.save({"weights": _RunsCodeWhenUnpickled()}, path)
    network = DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2,))
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        FrozenClassifier(network, checkpoint=str(path))
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        load_weights(network, str(path), "cpu")
