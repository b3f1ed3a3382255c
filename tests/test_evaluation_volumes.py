"""The evaluation bundle on volumes: 3D NIfTI volumes and a DICOM series scored against 3D masks in their own grid
(3D pointing game, relevance mass, top-|GT| IoU, counterfactual validity of the most positive slice), per slice with
mask voxels, and 2D entries of the same datalist scored as before."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import brain_like, evaluation_workflow
from monai.utils import CommonKeys

from medxgan_monai.data import collect_evaluation_items
from medxgan_monai.explain.base import Attribution
from medxgan_monai.handlers import ExplanationScorer, InferenceReport
from medxgan_monai.handlers.explanation import ATTRIBUTIONS, SECONDS
from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice
from medxgan_monai.io.nifti import write_nifti
from medxgan_monai.io.series import read_dicom_series

METHODS = ["gradient", "medxgan_ig"]
QUICK = {
    "methods": METHODS,
    "perturbation_steps": 4,
    "randomization_images": 2,
    # the robustness section runs on the 2D images of a mixed datalist and leaves the slices of volumes out
    "robustness_images": 4,
    "bootstrap_samples": 200,
    "example_cases": 1,
    "counterfactual_max_steps": 2,
}
OBLIQUE = np.array([[0.0, -0.9, 0.1, 20.0], [1.1, 0.0, 0.0, -31.5], [0.0, 0.05, 2.5, 7.25], [0, 0, 0, 1]])
PATIENT = SyntheticPatient("EVAL-VOL-7", "EVALUATION^VOLUME")
NIFTI_VOLUMES = ("head_a", "head_b")  # the positive NIfTI volumes; "head_c" is negative
DICOM_VOLUME = "series_dicom"
IMAGES = ("flat_a", "flat_b")  # the positive 2D images; "flat_c" is negative


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _blob(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"))
    distance = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(len(shape))))
    return distance <= radius


def _nifti_volume(folder: Path, name: str, seed: int, lesion_slices: tuple[int, ...] | None) -> dict:
    """A 36 x 40 x 6 volume; a lesion: a bright disc on ``lesion_slices`` (three of them), its exact mask."""
    image = brain_like((36, 40, 6), seed=seed)
    entry = {"image": f"{name}.nii.gz", "label": 0}
    if lesion_slices is not None:
        mask = np.zeros(image.shape, dtype=bool)
        disc = _blob((36, 40), (12 + 4 * seed, 22 - 2 * seed), 4.5)
        for k in lesion_slices:
            mask[:, :, k] = disc
        image = np.where(mask, image + 1500.0, image)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), OBLIQUE), folder / f"{name}_mask.nii.gz")
        entry = {"image": f"{name}.nii.gz", "label": 1, "mask": f"{name}_mask.nii.gz"}
    nib.save(nib.Nifti1Image(image.astype(np.float32), OBLIQUE), folder / f"{name}.nii.gz")
    return entry


def _dicom_series(folder: Path, count: int = 5, lesion_slices: tuple[int, ...] = (1, 2, 3)) -> list[Path]:
    """An axial MR series of ``count`` 36-row x 40-column slices, a bright disc on ``lesion_slices``; its mask in
    ``read_dicom_series``' (columns, rows, slices) layout and affine beside the folder."""
    folder.mkdir(parents=True)
    disc = _blob((36, 40), (20, 15), 4.5)  # (rows, columns), as DICOM pixel data
    paths = []
    for index in range(count):
        pixels = brain_like((36, 40), seed=10 + index)
        if index in lesion_slices:
            pixels = np.where(disc, pixels + 1500.0, pixels)
        geometry = MRSliceGeometry((-20.0, -18.0, 4.0 * index), pixel_spacing=(0.9, 1.1), slice_thickness=4.0)
        path = folder / f"slice_{index:02d}.dcm"
        write_mr_slice(pixels.astype(np.uint16), geometry, PATIENT, path, instance_number=index + 1)
        paths.append(path)
    series = read_dicom_series(paths)
    mask = np.zeros(series.shape, dtype=np.uint8)
    for k in lesion_slices:
        mask[:, :, k] = disc.T  # (columns, rows)
    write_nifti(mask, series.affine, folder.parent / f"{folder.name}_mask.nii.gz")
    return paths


def _flat_image(folder: Path, name: str, seed: int, positive: bool) -> dict:
    image = brain_like((36, 40), seed=seed)
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    entry = {"image": f"{name}.nii.gz", "label": int(positive)}
    if positive:
        mask = _blob((36, 40), (14 + 3 * seed, 18), 5.0)
        image = np.where(mask, image + 1500.0, image)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"{name}_mask.nii.gz")
        entry["mask"] = f"{name}_mask.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), folder / f"{name}.nii.gz")
    return entry


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A datalist mixing 2D images, 3D NIfTI volumes and a DICOM series (positives with masks, and negatives)."""
    folder = tmp_path_factory.mktemp("volumes")
    entries = [
        _nifti_volume(folder, "head_a", 1, (1, 2, 3)),
        _flat_image(folder, "flat_a", 1, True),
        _nifti_volume(folder, "head_b", 2, (2, 3, 4)),
        _nifti_volume(folder, "head_c", 3, None),
        _flat_image(folder, "flat_b", 2, True),
        _flat_image(folder, "flat_c", 3, False),
    ]
    _dicom_series(folder / DICOM_VOLUME)
    entries.insert(2, {"image": DICOM_VOLUME, "label": 1, "mask": f"{DICOM_VOLUME}_mask.nii.gz"})
    (folder / "datalist.json").write_text(json.dumps({"test": entries}))
    flat = [entry for entry in entries if entry["image"].startswith("flat")]
    (folder / "datalist_2d.json").write_text(json.dumps({"test": flat}))
    (folder / "datalist_one.json").write_text(json.dumps({"test": entries[:1]}))
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """The tiny networks, the classifier leaning positive (its output bias raised), so that the volumes are called
    positive and their counterfactuals are scored."""
    from conftest import save_tiny_weights

    weights = save_tiny_weights(tmp_path_factory.mktemp("weights"))
    state = torch.load(weights["classifier_ckpt"], weights_only=True)
    state["class_layers.out.bias"] += torch.tensor([0.0, 2.0])
    torch.save(state, weights["classifier_ckpt"])
    return weights


@pytest.fixture(scope="module")
def evaluated(data, weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluated") / "out"
    evaluation_workflow(data / "datalist.json", out, weights, **QUICK).run()
    return out


def _mask_of(data: Path, stem: str) -> np.ndarray:
    return nib.load(data / f"{stem}_mask.nii.gz").get_fdata() > 0.5


def _localization(maps: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Pointing game, relevance mass and top-|GT| IoU of one map, in NumPy (the definitions, not the package's code)."""
    peak = maps == maps.max()
    area = int(mask.sum())
    ordered = np.sort(maps.ravel())[::-1]
    assert ordered[area - 1] > ordered[area], "no tie at the |GT|-th value, so the top |GT| voxels are one set"
    top = maps >= ordered[area - 1]
    return {
        "pointing_game": float(not (peak & ~mask).any()),
        "relevance_mass": float(maps[mask].sum() / maps.sum()),
        "top_k_iou": float((top & mask).sum() / (top | mask).sum()),
    }


def test_each_positive_volume_is_scored_in_3d_on_its_written_maps(data, evaluated):
    rows = _rows(evaluated / "metrics_per_volume.csv")
    volumes = (*NIFTI_VOLUMES, DICOM_VOLUME)
    assert sorted((row["stem"], row["method"]) for row in rows) == sorted((s, m) for s in volumes for m in METHODS)
    predictions = {(row["stem"], row["slice"]): row for row in _rows(evaluated / "predictions.csv")}
    for row in rows:
        stem, method = row["stem"], row["method"]
        written = nib.load(evaluated / f"{stem}_{method}.nii.gz")
        maps, mask = written.get_fdata(), _mask_of(data, stem)
        assert maps.shape == mask.shape, "the maps are written in the volume's own grid"
        np.testing.assert_allclose(written.affine, nib.load(data / f"{stem}_mask.nii.gz").affine, atol=1e-4)
        assert all(maps[:, :, k].max() > 0 for k in range(maps.shape[2])), "evaluate.json explains every slice"
        assert row["slices"] == str(maps.shape[2]) == row["explained_slices"]
        assert row["lesion_slices"] == "3"
        for metric, expected in _localization(maps, mask).items():
            assert float(row[metric]) == pytest.approx(expected, abs=1e-5), (stem, method, metric)
        peak_slices = int((maps == maps.max()).any(axis=(0, 1)).sum())
        assert int(row["peak_slices"]) == peak_slices
        # the volume's probability and its counterfactual: the most positive slice's
        volume_row = predictions[(stem, "")]
        slice_probabilities = [float(predictions[(stem, str(k))]["probability"]) for k in range(maps.shape[2])]
        assert float(row["probability"]) == pytest.approx(max(slice_probabilities), abs=1e-6)
        assert int(row["top_slice"]) == int(np.argmax(slice_probabilities))
        validity = row["counterfactual_validity"]
        assert float(volume_row["probability"]) >= 0.5, "the classifier leans positive"
        if method == "gradient":
            assert validity == "", "validity of a medXGAN counterfactual only"
        else:
            assert float(validity) == float(float(volume_row["residual_counterfactual_probability"]) < 0.5)
        for name in ("deletion_auc", "insertion_auc", "road_morf_auc"):
            assert name not in row, "the 2D classifier's perturbation metrics are not scored for volumes"
    summary = {(r["method"], r["metric"]): r for r in _rows(evaluated / "metrics_summary_volumes.csv")}
    for method in METHODS:
        values = [float(r["relevance_mass"]) for r in rows if r["method"] == method]
        cell = summary[(method, "relevance_mass")]
        assert int(cell["n"]) == 3 and float(cell["mean"]) == pytest.approx(np.mean(values), abs=1e-5)
        assert float(cell["ci_low"]) <= float(cell["mean"]) <= float(cell["ci_high"])


def test_the_slices_with_mask_voxels_are_scored_one_by_one(data, evaluated):
    rows = _rows(evaluated / "metrics_per_slice.csv")
    lesions = {"head_a": (1, 2, 3), "head_b": (2, 3, 4), DICOM_VOLUME: (1, 2, 3)}
    expected_keys = {(stem, str(k), m) for stem, slices in lesions.items() for k in slices for m in METHODS}
    assert {(row["stem"], row["slice"], row["method"]) for row in rows} == expected_keys
    for row in rows:
        k = int(row["slice"])
        maps = nib.load(evaluated / f"{row['stem']}_{row['method']}.nii.gz").get_fdata()[:, :, k]
        mask = _mask_of(data, row["stem"])[:, :, k]
        assert row["explained"] == "1"
        for metric, expected in _localization(maps, mask).items():
            assert float(row[metric]) == pytest.approx(expected, abs=1e-5), (row["stem"], k, metric)
    sources = {row["source"] for row in rows if row["stem"] == DICOM_VOLUME}
    assert {Path(source).name for source in sources} == {f"slice_{k:02d}.dcm" for k in lesions[DICOM_VOLUME]}
    markdown = (evaluated / "summary.md").read_text()
    assert "2 image(s) and 3 volume(s) scored" in markdown
    assert "## Volumes, scored in each volume's own grid" in markdown and "### Per slice with mask voxels" in markdown
    assert "top-|GT|" not in markdown, "a | in a table cell would split it"
    assert f"| {METHODS[0]} |" in markdown.split("## Volumes")[1]


def test_2d_entries_of_a_mixed_datalist_score_as_in_a_2d_datalist(data, weights, evaluated, tmp_path):
    rows = _rows(evaluated / "metrics_per_image.csv")
    assert sorted({row["stem"] for row in rows}) == list(IMAGES), "2D rows only: no volume and no slice"
    alone = tmp_path / "alone"
    evaluation_workflow(data / "datalist_2d.json", alone, weights, **QUICK).run()
    reference = {(row["stem"], row["method"]): row for row in _rows(alone / "metrics_per_image.csv")}
    assert set(reference) == {(row["stem"], row["method"]) for row in rows}
    for row in rows:
        if row["method"] != "gradient":  # the medXGAN inversion optimizes each batch together: batches differ here
            continue
        twin = reference[(row["stem"], row["method"])]
        for metric in ("pointing_game", "relevance_mass", "top_k_iou", "pixel_auroc", "deletion_auc", "entropy"):
            assert float(row[metric]) == pytest.approx(float(twin[metric]), abs=1e-4), (row["stem"], metric)
    assert not (alone / "metrics_per_volume.csv").exists(), "no volume, no volume files"
    assert "Volumes" not in (alone / "summary.md").read_text()
    predictions = _rows(evaluated / "predictions.csv")
    assert [row["slice"] for row in predictions if row["stem"] == DICOM_VOLUME] == ["", "0", "1", "2", "3", "4"]
    assert {row["stem"] for row in predictions} == {*IMAGES, *NIFTI_VOLUMES, DICOM_VOLUME}


def test_slices_not_explained_are_zero_maps_in_the_volume_and_left_out_per_slice(data, weights, tmp_path):
    out = tmp_path / "out"
    evaluation_workflow(data / "datalist_one.json", out, weights, **{**QUICK, "slices": "2-3"}).run()
    maps = nib.load(out / "head_a_gradient.nii.gz").get_fdata()
    assert [k for k in range(6) if maps[:, :, k].any()] == [2, 3], "slices 2 and 3 only; the others are zero"
    (row,) = [row for row in _rows(out / "metrics_per_volume.csv") if row["method"] == "gradient"]
    assert row["explained_slices"] == "2" and row["lesion_slices"] == "3"
    for metric, expected in _localization(maps, _mask_of(data, "head_a")).items():
        assert float(row[metric]) == pytest.approx(expected, abs=1e-5), metric
    per_slice = {r["slice"]: r for r in _rows(out / "metrics_per_slice.csv") if r["method"] == "gradient"}
    assert sorted(per_slice) == ["1", "2", "3"]
    assert per_slice["1"]["explained"] == "0" and per_slice["1"]["relevance_mass"] == "", "no map: not scored"
    assert all(per_slice[k]["explained"] == "1" and per_slice[k]["relevance_mass"] != "" for k in ("2", "3"))
    summary = {(r["method"], r["metric"]): r for r in _rows(out / "metrics_summary_slices.csv")}
    assert summary[("gradient", "relevance_mass")]["n"] == "2"


def test_the_volume_scorer_scores_designed_maps_and_takes_the_most_positive_slices_counterfactual(tmp_path):
    """Three slices in two batches, maps equal in both grids (no resizing), slice 0 not explained: the scores, the
    written map, the counterfactual of the most positive slice, the seconds and the predictions."""
    from monai.transforms import Compose, EnsureTyped

    from medxgan_monai.data.volumes import slice_keys
    from medxgan_monai.handlers.evaluation import VolumeScorer
    from medxgan_monai.handlers.explanation import EXPLAINED
    from medxgan_monai.io.ledger import OutputLedger
    from medxgan_monai.transforms import LoadScand

    rng = np.random.default_rng(0)
    shape = (8, 10, 3)
    mask = np.zeros(shape, dtype=bool)
    mask[2:5, 3:6, 1:] = True
    write_nifti(rng.random(shape).astype(np.float32), OBLIQUE, tmp_path / "vol.nii.gz")
    write_nifti(mask.astype(np.uint8), OBLIQUE, tmp_path / "vol_mask.nii.gz")
    maps = (0.1 * rng.random(shape) + mask * np.array([0.0, 0.5, 0.9])).astype(np.float32)
    maps[:, :, 0] = 0  # not explained
    base = {"image": str(tmp_path / "vol.nii.gz"), "mask": str(tmp_path / "vol_mask.nii.gz"), "label": 1}
    items = [{**base, "stem": "vol", "source": base["image"], **slice_keys(k, 3, 2, base["image"])} for k in range(3)]
    out = tmp_path / "out"
    report = InferenceReport(out)
    preprocessing = Compose([LoadScand(keys="image"), EnsureTyped(keys="image", dtype=torch.float32)])
    scorer = VolumeScorer(items, preprocessing, OutputLedger(out), report)
    probabilities = torch.tensor([0.3, 0.6, 0.9])  # slice 2 is the most positive
    counterfactual = torch.tensor([math.nan, 0.8, 0.2])  # only slice 2's counterfactual flips the decision
    for slices in ([0, 1], [2]):
        picked = torch.tensor(slices)
        batch = {"stem": ["vol"] * len(slices), **{key: [items[k][key] for k in slices] for key in ("slice", "slices")}}
        batch |= {"slice_axis": [2] * len(slices), "volume_source": [base["image"]] * len(slices)}
        planes = torch.from_numpy(np.moveaxis(maps, 2, 0)[slices]).unsqueeze(1)
        attribution = Attribution(planes, torch.zeros_like(planes), counterfactual[picked])
        output = {
            CommonKeys.PRED: torch.stack([1 - probabilities[picked], probabilities[picked]], 1).log(),
            ATTRIBUTIONS: {"medxgan_ig": attribution},
            SECONDS: {"medxgan_ig": 0.25},
            EXPLAINED: torch.tensor([k != 0 for k in slices]),
        }
        scorer.add(batch, output, list(range(len(slices))), probabilities[picked])
    assert not report.problems
    written = nib.load(out / "vol_medxgan_ig.nii.gz")
    np.testing.assert_array_equal(written.get_fdata(), maps)
    np.testing.assert_allclose(written.affine, OBLIQUE, atol=1e-6)
    (row,) = scorer.rows
    assert row["top_slice"] == 2 and row["explained_slices"] == 2 and row["lesion_slices"] == 2
    assert row["probability"] == pytest.approx(0.9) and row["seconds"] == pytest.approx(0.5)
    assert row["counterfactual_validity"] == 1.0, "the most positive slice's counterfactual, which flips"
    assert row["pointing_game"] == 1.0 and row["peak_slices"] == 1
    for metric, expected in _localization(maps, mask).items():
        assert row[metric] == pytest.approx(expected, abs=1e-6), metric
    by_slice = {r["slice"]: r for r in scorer.slice_rows}
    assert sorted(by_slice) == [1, 2]
    assert by_slice[1]["counterfactual_validity"] == 0.0 and by_slice[2]["counterfactual_validity"] == 1.0
    assert by_slice[1]["relevance_mass"] == pytest.approx(_localization(maps[:, :, 1], mask[:, :, 1])["relevance_mass"])
    (prediction,) = report.predictions
    assert prediction["slice"] == "" and float(prediction["probability"]) == pytest.approx(0.9, abs=1e-6)
    assert prediction["residual_counterfactual_probability"] == "0.200000"
    assert [r["slice"] for r in prediction["slice_rows"]] == [0, 1, 2]


def test_a_volume_mask_outside_the_volumes_grid_is_refused_naming_the_mask(data, tmp_path):
    volume = nib.load(data / "head_a.nii.gz")
    mask = nib.load(data / "head_a_mask.nii.gz").get_fdata()
    nib.save(nib.Nifti1Image(mask[:, :, :5], volume.affine), tmp_path / "short_mask.nii.gz")
    shifted = volume.affine.copy()
    shifted[0, 3] += 0.5
    nib.save(nib.Nifti1Image(mask, shifted), tmp_path / "shifted_mask.nii.gz")
    nib.save(nib.Nifti1Image(mask.transpose(1, 0, 2), volume.affine), tmp_path / "dicom_mask.nii.gz")
    entries = [
        {"image": str(data / "head_a.nii.gz"), "label": 1, "mask": str(tmp_path / "short_mask.nii.gz")},
        {"image": str(data / "head_b.nii.gz"), "label": 1, "mask": str(tmp_path / "shifted_mask.nii.gz")},
        {"image": str(data / DICOM_VOLUME), "label": 1, "mask": str(tmp_path / "dicom_mask.nii.gz")},
        {"image": str(data / DICOM_VOLUME), "label": 1, "mask": str(data / f"{DICOM_VOLUME}_mask.nii.gz")},
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"test": entries}))
    items, problems = collect_evaluation_items(tmp_path / "datalist.json")
    assert [p.stem for p in problems] == ["head_a", "head_b", DICOM_VOLUME]
    assert "short_mask.nii.gz: shape (36, 40, 5) is not the volume's grid (36, 40, 6)" in problems[0].problem
    assert "shifted_mask.nii.gz: its affine differs from the volume's by up to 0.5 mm" in problems[1].problem
    assert "dicom_mask.nii.gz: shape (40, 36, 6) is not the volume's grid (40, 36, 5)" in problems[2].problem
    for problem in problems:
        assert PATIENT.patient_id not in problem.problem and "EVALUATION" not in problem.problem
    (item,) = items
    assert item["volume"] == "dicom_series" and len(item["files"]) == 5 and item["stem"] == f"{DICOM_VOLUME}_2"


def test_a_scorer_without_volumes_reports_each_volume_once_and_scores_the_2d_images(tmp_path):
    report = InferenceReport(tmp_path)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    scorer = ExplanationScorer(classifier, report, perturbation_steps=2, examples=1)
    images, masks = torch.rand(3, 1, 8, 8), torch.zeros(3, 1, 8, 8)
    masks[:, :, 2:4, 2:4] = 1
    images[1, :, 2:4, 2:4] += 2  # the 2D image's mass differs from the slices'

    batch = {
        "mask": masks,
        "stem": ["vol", "flat", "vol"],
        "source": ["vol.nii.gz", "flat.nii.gz", "vol.nii.gz"],
        "slice": torch.tensor([0, -1, 1]),
        "slices": torch.tensor([2, 0, 2]),
        "slice_axis": torch.tensor([2, -1, 2]),
        "volume_source": ["vol.nii.gz", "", "vol.nii.gz"],
    }
    output = {
        CommonKeys.IMAGE: images,
        CommonKeys.LABEL: torch.ones(3),
        CommonKeys.PRED: classifier(images),
        ATTRIBUTIONS: {"gradient": Attribution(images.clone())},
        SECONDS: {"gradient": 0.01},
    }
    scorer(SimpleNamespace(state=SimpleNamespace(batch=batch, output=output, iteration=1)))
    assert [row["stem"] for row in scorer.rows] == ["flat"]
    (problem,) = report.problems
    assert problem.stem == "vol" and "scores no volumes" in problem.problem
    mass = float((images[1] * masks[1]).sum() / images[1].sum())
    assert scorer.rows[0]["relevance_mass"] == pytest.approx(mass, abs=1e-6)
    assert math.isfinite(scorer.rows[0]["deletion_auc"])
