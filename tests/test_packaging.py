"""What a new user does with the wheel: build it, install it into a fresh virtual environment, export the bundle folder
from the installed package, run inference from inside that folder and with the console command from another folder,
on a DICOM and a NIfTI, with no repository on the path.

The fresh environment gets the wheel and its dependencies from pip (the package index and pip's cache, which the set-up
of the test environment filled moments before; torch pinned to the running build, as ``scripts/setup.sh`` pins it, so
that no CUDA build is pulled). A few minutes and about 2.3 GB of disk, removed afterwards.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import brain_like

from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice

REPOSITORY = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, timeout: int = 600) -> str:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    environment["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment holding the wheel built from this checkout and its dependencies; yields its bin
    folder."""
    import torch

    work = tmp_path_factory.mktemp("packaging")
    wheels = work / "dist"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", str(REPOSITORY), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)], work)
    (wheel,) = wheels.glob("medxgan_monai-*.whl")
    environment = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(environment)], work)
    target = ["--python", str(environment / "bin" / "python")]
    _run([*pip, *target, "install", "-q", str(wheel), f"torch=={torch.__version__}"], work, timeout=1200)
    yield environment / "bin"
    shutil.rmtree(environment, ignore_errors=True)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("packaging_scans")
    nifti = folder / "brain.nii.gz"
    nib.save(nib.Nifti1Image(brain_like((56, 48)), np.diag([0.9, 1.1, 1.0, 1.0])), nifti)
    dicom = folder / "slice.dcm"
    write_mr_slice(
        brain_like((48, 40), seed=3).astype(np.uint16),
        MRSliceGeometry((5.0, -12.0, 3.0), pixel_spacing=(0.9, 1.1)),
        SyntheticPatient("PACKAGING-1", "PACKAGING^TEST"),
        dicom,
    )
    return {"nifti": nifti, "dicom": dicom}


def test_the_installed_package_carries_its_bundle_and_runs_it_outside_the_repository(installed, scans, tmp_path):
    query = "import medxgan_monai.bundle as b; print(b.DEFAULT_BUNDLE)"
    where = _run([str(installed / "python"), "-c", query], tmp_path)
    assert Path(where.strip()).is_relative_to(installed.parent), "the bundle comes from the installed wheel"

    _run([str(installed / "medxgan-export-bundle"), "exported"], tmp_path)
    bundle = tmp_path / "exported"
    assert {p.name for p in bundle.iterdir()} == {"configs", "models", "docs", "schema", "LICENSE"}

    out = tmp_path / "bundle_out"
    inputs = f"['{scans['nifti']}','{scans['dicom']}']"
    command = [str(installed / "python"), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--input", inputs, "--output_dir", str(out), "--methods", "['medxgan_ig','gradcam']", "--device", "cpu"]
    _run(command, bundle)
    with open(out / "predictions.csv", newline="") as stream:
        assert {row["stem"] for row in csv.DictReader(stream)} == {"brain", "slice"}
    source = nib.load(scans["nifti"])
    saliency = nib.load(out / "brain_medxgan_ig.nii.gz")
    assert saliency.shape == source.shape and np.array_equal(saliency.affine, source.affine)
    derived = pydicom.dcmread(out / "slice_medxgan_ig_pm.dcm")
    assert derived.StudyInstanceUID == pydicom.dcmread(scans["dicom"]).StudyInstanceUID

    cli_out = tmp_path / "cli_out"
    command = [str(installed / "medxgan-explain"), str(scans["nifti"]), "--output", str(cli_out)]
    _run([*command, "--methods", "gradcam"], tmp_path)
    assert (cli_out / "brain_gradcam.nii.gz").is_file()


def test_exporting_the_bundle_never_overwrites_a_folder(tmp_path):
    from medxgan_monai.cli.export_bundle import export_bundle, main

    taken = tmp_path / "mine"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep")
    assert main([str(taken)]) == 2 and (taken / "notes.txt").read_text() == "keep"
    exported = export_bundle(tmp_path / "copy")
    assert (exported / "configs" / "inference.json").is_file() and (exported / "models" / "model.pt").is_file()
    with pytest.raises(FileExistsError):
        export_bundle(exported)
