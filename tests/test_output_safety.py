"""Output-folder safety of the inference bundle (issue 16): one run at a time per output folder, input-derived names
that stay inside our folders and never collide, no user file replaced, no stale errors.csv, no explaining of our own
outputs, PNG/JPEG outputs, and clear errors for empty folders, unwritable outputs, NaN affines and degenerate images.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE_ROOT, REPO_ROOT, TINY_BUNDLE, brain_like
from PIL import Image

from medxgan_monai.bundle import run_inference
from medxgan_monai.cli.explain import main as explain_main
from medxgan_monai.data import collect_inputs, output_stem
from medxgan_monai.explain import Explainers
from medxgan_monai.io import OutputLedger


def _run(inputs, out: Path, weights: dict, **extra):
    """The inference bundle on tiny networks with the cheapest method; returns its report."""
    overrides = {
        **TINY_BUNDLE,
        **weights,
        "input": [str(p) for p in inputs],
        "output_dir": str(out),
        "tracking_uri": f"sqlite:///{out.parent / 'mlruns.db'}",
        "methods": ["gradient"],
        **extra,
    }
    return run_inference(overrides, BUNDLE_ROOT)


def _nifti(path: Path, seed: int = 0, shape=(32, 32)) -> Path:
    nib.save(nib.Nifti1Image(brain_like(shape, seed=seed), np.eye(4)), path)
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(autouse=True)
def _tracking_in_tmp(tmp_path, monkeypatch):
    # the command line's default tracking store lies in the repository; keep the tests' runs out of it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'cli_mlruns.db'}")


# item 10: PNG and JPEG inputs


def test_png_and_jpeg_inputs_get_readable_outputs_with_an_identity_affine(weights, tmp_path):
    picture = brain_like((40, 56))  # 40 rows, 56 columns
    pixels = (255 * picture / picture.max()).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([pixels, pixels // 2, pixels], axis=-1)).save(tmp_path / "colour.jpg", quality=95)
    out = tmp_path / "out"
    report = _run([tmp_path / "gray.png", tmp_path / "colour.jpg"], out, weights)
    assert not report.problems, report.problems
    assert {row["stem"] for row in _rows(out / "predictions.csv")} == {"gray", "colour"}
    for stem in ("gray", "colour"):
        saliency = nib.load(out / f"{stem}_gradient.nii.gz")
        assert saliency.shape == (56, 40), "MONAI's (x, y) order: columns first"
        assert np.array_equal(saliency.affine, np.eye(4)), "a bitmap has no geometry: one unit per pixel"
        assert np.isfinite(saliency.get_fdata()).all() and saliency.get_fdata().max() > 0
        with Image.open(out / f"{stem}_panel.png") as panel:
            panel.load()
            assert panel.width > panel.height > 0


# item 5: one run at a time per output folder

_HOLD_THE_FOLDER = """
import sys
from medxgan_monai.io.ledger import OutputLedger
ledger = OutputLedger(sys.argv[1])  # kept: a ledger that is gone releases its lock
ledger.split([])
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_run_into_a_folder_another_process_uses_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_FOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        # wait until it holds the folder (imports may print lines of their own first)
        assert any(line.strip() == "locked" for line in holder.stdout), "the holder process failed"
        with pytest.raises(ValueError) as refused:
            OutputLedger(out).split([])
        assert str(out) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
        # the command line refuses with a message and exit status 2 before any work
        scan = _nifti(tmp_path / "scan.nii.gz")
        assert explain_main([str(scan), "--output", str(out), "--methods", "gradient"]) == 2
        error = capsys.readouterr().err
        assert str(out) in error and "in use" in error and f"pid {holder.pid}" in error
        assert not list(out.glob("*.nii.gz")) and not (out / "predictions.csv").exists()
    finally:
        holder.kill()  # a crash: the holder never releases the lock itself
        holder.wait()
    ledger = OutputLedger(out)
    assert ledger.split([{"stem": "a"}]) == ([{"stem": "a"}], []), "the OS dropped the dead run's lock"
    ledger.release()


def test_two_threads_exclude_each_other_and_a_waiting_run_gets_the_folder_when_it_is_released(tmp_path):
    out = tmp_path / "out"
    first = OutputLedger(out)
    first.split([])
    refusals: list[Exception] = []

    def second_run() -> None:
        try:
            OutputLedger(out).split([])
        except Exception as error:
            refusals.append(error)

    thread = threading.Thread(target=second_run)
    thread.start()
    thread.join(30)
    assert len(refusals) == 1 and "in use" in str(refusals[0]) and str(out) in str(refusals[0])

    waiting, started = OutputLedger(out, wait_seconds=30), []
    thread = threading.Thread(target=lambda: (waiting.split([]), started.append(time.monotonic())))
    thread.start()
    time.sleep(0.5)
    assert not started, "the waiting run must not start while the folder is in use"
    released_at = time.monotonic()
    first.release()
    thread.join(30)
    assert started and started[0] >= released_at
    waiting.release()


# items 6 and 7: input-derived names


def test_output_stems_are_safe_file_names():
    for name in ("..nii.gz", "...nii.gz", ".nii", ".hidden.png", "-rf.dcm", "a b\x00c\n.nii", "ü" * 300 + ".nii"):
        stem = output_stem(Path(name))
        assert stem and stem not in (".", "..") and not stem.startswith((".", "-")), (name, stem)
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem), (name, stem)
        assert len(stem) <= 120


def test_the_ledger_refuses_names_that_would_leave_its_folders(tmp_path):
    ledger = OutputLedger(tmp_path / "out")
    ledger.staging("case")
    ledger.commit("case", {"stem": "case"})
    for name in ("..", ".", "", "../../elsewhere", "a/b", "x\x00"):
        with pytest.raises(ValueError):
            ledger.staging(name)
        with pytest.raises(ValueError):
            ledger.discard([name])
    assert ledger.completed("case") is not None, "nothing of the ledger was deleted"
    ledger.release()


def test_the_ledger_hands_each_committed_item_on_after_its_files_are_in_place(tmp_path):
    seen = []

    def on_commit(stem, files):
        seen.append((stem, [path.name for path in files], all(path.is_file() for path in files)))

    ledger = OutputLedger(tmp_path / "out", on_commit=on_commit)
    (ledger.staging("case") / "case_map.nii.gz").write_bytes(b"map")
    assert seen == [], "nothing is handed on before the commit"
    ledger.commit("case", {"stem": "case"})
    assert seen == [("case", ["case_map.nii.gz"], True)]
    ledger.release()


def test_colliding_file_names_get_unique_stems_and_no_map_is_overwritten(weights, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    colliding = [_nifti(scans / name, seed) for seed, name in enumerate(("case.nii", "case.nii.gz", "case_2.nii.gz"))]
    out = tmp_path / "out"
    report = _run(colliding, out, weights)
    assert not report.problems
    rows = _rows(out / "predictions.csv")
    stems = [row["stem"] for row in rows]
    assert len(set(stems)) == 3, stems
    assert {row["source"] for row in rows} == {str(path) for path in colliding}
    maps = {stem: nib.load(out / f"{stem}_gradient.nii.gz").get_fdata() for stem in stems}
    assert not np.array_equal(maps[stems[0]], maps[stems[1]]) and not np.array_equal(maps[stems[1]], maps[stems[2]])


def test_a_later_run_on_another_file_of_the_same_name_keeps_both_results(weights, tmp_path):
    (tmp_path / "monday").mkdir()
    (tmp_path / "tuesday").mkdir()
    monday = _nifti(tmp_path / "monday" / "case.nii.gz")
    tuesday = _nifti(tmp_path / "tuesday" / "case.nii.gz", seed=1)
    out = tmp_path / "out"
    assert not _run([monday], out, weights).problems
    mondays_map = (out / "case_gradient.nii.gz").read_bytes()
    report = _run([tuesday], out, weights)
    assert not report.problems and report.summary()["explained"] == 1, "not taken for Monday's result"
    (row,) = _rows(out / "predictions.csv")
    assert row["source"] == str(tuesday) and (out / f"{row['stem']}_gradient.nii.gz").is_file()
    assert row["stem"] != "case" and (out / "case_gradient.nii.gz").read_bytes() == mondays_map
    assert _run([tuesday], out, weights).summary()["already_complete"] == 1, "and found again by the next run"


def test_an_input_named_dots_stays_inside_the_output_folder_and_the_ledger_survives(weights, tmp_path):
    scan, dots = _nifti(tmp_path / "scan.nii.gz"), _nifti(tmp_path / "...nii.gz", seed=5)  # stem ".."
    out = tmp_path / "out"
    assert not _run([scan], out, weights).problems
    before = sorted(p.name for p in tmp_path.iterdir())
    report = _run([scan, dots], out, weights)
    assert not report.problems and report.summary()["already_complete"] == 1
    assert OutputLedger(out).completed("scan") is not None, "the finished item's record survives"
    rows = _rows(out / "predictions.csv")
    assert {row["source"] for row in rows} == {str(scan), str(dots)}
    (dots_row,) = [row for row in rows if row["source"] == str(dots)]
    assert dots_row["stem"] not in (".", "..") and (out / f"{dots_row['stem']}_gradient.nii.gz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written outside the output folder"


# item 8: user files, stale errors.csv, an output folder inside the inputs


def test_a_users_own_predictions_csv_is_never_replaced(weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("my own notes\n")
    scan = _nifti(tmp_path / "scan.nii.gz")
    with pytest.raises(ValueError) as refused:
        _run([scan], out, weights)
    assert str(out / "predictions.csv") in str(refused.value) and "not written by this tool" in str(refused.value)
    assert explain_main([str(scan), "--output", str(out), "--methods", "gradient"]) == 2
    assert "not written by this tool" in capsys.readouterr().err
    assert (out / "predictions.csv").read_text() == "my own notes\n"
    assert not list(out.glob("*.nii.gz"))


def test_run_files_are_replaced_or_removed_only_when_this_tool_wrote_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "errors.csv").write_text("the user's own")
    ledger = OutputLedger(out)
    ledger.remove_run_file("errors.csv")
    assert (out / "errors.csv").read_text() == "the user's own"
    with pytest.raises(ValueError, match="not written by this tool"):
        ledger.claim_run_file("errors.csv")
    (out / "errors.csv").unlink()
    ledger.claim_run_file("errors.csv").write_text("ours")
    ledger.remove_run_file("errors.csv")
    assert not (out / "errors.csv").exists()
    (out / "errors.csv").write_text("a new file of the user's, made after ours was removed")
    with pytest.raises(ValueError, match="not written by this tool"):
        OutputLedger(out).split([])


def test_a_clean_rerun_removes_the_errors_csv_of_the_earlier_run(weights, tmp_path):
    scan = _nifti(tmp_path / "scan.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    out = tmp_path / "out"
    assert len(_run([scan, broken], out, weights).problems) == 1
    assert [row["stem"] for row in _rows(out / "errors.csv")] == ["broken"]
    _nifti(broken, seed=3)  # the user fixes the file
    assert not _run([scan, broken], out, weights).problems
    assert not (out / "errors.csv").exists(), "an errors.csv that no longer describes the folder misleads"
    assert {row["stem"] for row in _rows(out / "predictions.csv")} == {"scan", "broken"}


def test_an_output_folder_inside_the_input_folder_is_not_explained(weights, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    _nifti(scans / "a.nii.gz")
    _nifti(scans / "b.nii.gz", seed=1)
    out = scans / "results"
    for _ in range(2):
        assert not _run([scans], out, weights).problems
        assert {row["stem"] for row in _rows(out / "predictions.csv")} == {"a", "b"}
    assert [item["stem"] for item in collect_inputs(scans)] == ["a", "b"]


# item 14: usage errors and inputs screened before explaining


def test_an_empty_input_folder_is_an_error_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no scans here")
    assert explain_main([str(empty), "--output", str(tmp_path / "out")]) == 2
    assert str(empty) in capsys.readouterr().err


def test_an_unwritable_output_folder_is_a_message_with_exit_status_2(tmp_path, capsys):
    scan = _nifti(tmp_path / "scan.nii.gz")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert explain_main([str(scan), "--output", str(blocker / "out")]) == 2
    error = capsys.readouterr().err
    assert str(blocker / "out") in error and "not writable" in error and "Traceback" not in error


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_message_with_exit_status_2(tmp_path, capsys):
    scan = _nifti(tmp_path / "scan.nii.gz")
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert explain_main([str(scan), "--output", str(out)]) == 2
    finally:
        out.chmod(0o755)
    assert str(out) in capsys.readouterr().err


def test_nan_affines_and_degenerate_images_are_rejected_before_explaining(weights, tmp_path, monkeypatch):
    good = _nifti(tmp_path / "good.nii.gz")
    nan_affine = _nifti(tmp_path / "nan_affine.nii", seed=1)
    header = bytearray(nan_affine.read_bytes())
    header[280:284] = np.float32(np.nan).tobytes()  # srow_x[0]: nibabel would not write a NaN affine itself
    nan_affine.write_bytes(bytes(header))
    assert np.isnan(nib.load(nan_affine).affine).any()
    line = tmp_path / "line.png"  # 1 row of 10000 pixels: the unit axis must count
    Image.fromarray((255 * np.random.default_rng(0).random((1, 10000))).astype(np.uint8)).save(line)
    explained: list[int] = []
    original = Explainers.explain

    def counting_explain(explainers, images):
        explained.append(images.shape[0])
        return original(explainers, images)

    monkeypatch.setattr(Explainers, "explain", counting_explain)
    report = _run([good, nan_affine, line], tmp_path / "out", weights)
    problems = {Path(p.path).name: p.problem for p in report.problems}
    assert set(problems) == {"nan_affine.nii", "line.png"}
    assert "affine" in problems["nan_affine.nii"] and "NaN" in problems["nan_affine.nii"]
    assert "below 8 pixels" in problems["line.png"]
    assert sum(explained) == 1, "only the good image reaches the explainers"
    assert [row["stem"] for row in _rows(tmp_path / "out" / "predictions.csv")] == ["good"]
