"""Robustness of maps to input perturbations: the measures on maps whose behaviour is known (one that ignores the
input, one that is the input), the documented noise level, the report section's files and its place in the
evaluation bundle, mask collection and a failing explainer."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import evaluation_workflow
from mlflow.tracking import MlflowClient

from medxgan_monai.handlers import EvaluationReport, ExplanationScorer, InferenceReport, RobustnessTest
from medxgan_monai.metrics.robustness import (
    gaussian_noise,
    max_sensitivity,
    noise_sigma,
    noise_stability,
    robustness_test,
    shift,
    shift_offsets,
    shift_stability,
)

SIZE = 24


def _images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _masks(batch: int = 3) -> torch.Tensor:
    masks = torch.zeros(batch, 1, SIZE, SIZE)
    masks[:, :, 8:14, 9:15] = 1
    return masks


#: a map that ignores its input: the same non-uniform pattern for every image
FIXED = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


def _explain(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``fixed`` ignores the input; ``input`` is the input itself (abs / max, the map convention)."""
    magnitude = images.abs()
    return {
        "fixed": FIXED.expand(images.shape[0], -1, -1, -1),
        "input": magnitude / magnitude.flatten(1).amax(1).view(-1, 1, 1, 1),
    }


def _read(path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_a_map_that_ignores_the_input_has_max_sensitivity_0_and_correlation_1():
    images, masks = _images(), _masks()
    sensitivity = max_sensitivity(_explain, images, radius=0.1, samples=3)
    assert torch.equal(sensitivity["fixed"], torch.zeros(3))
    assert (sensitivity["input"] > 0).all(), "a map that is the input moves with the noise"
    noisy = noise_stability(_explain, images, masks, snr_db=10)
    assert torch.allclose(noisy["fixed"]["spearman"], torch.ones(3))
    assert (noisy["input"]["spearman"] < 1).all()


def test_max_sensitivity_is_the_largest_relative_change_and_grows_with_the_radius():
    images = _images()

    def scaled(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input": x}  # not normalized: the change is exactly the noise

    small = max_sensitivity(scaled, images, radius=0.02, samples=4)["input"]
    large = max_sensitivity(scaled, images, radius=0.2, samples=4)["input"]
    norms = images.flatten(1).norm(dim=1)
    # ||delta||_F of U[-r, r] noise over N pixels is about r * sqrt(N / 3)
    expected = 0.02 * math.sqrt(SIZE * SIZE / 3) / norms
    assert torch.allclose(small, expected, rtol=0.1)
    assert (large > 5 * small).all()
    assert torch.equal(small, max_sensitivity(scaled, images, radius=0.02, samples=4)["input"]), "seeded"


def test_a_map_that_is_the_input_moves_with_a_shift():
    images, masks = _images(), _masks()
    for pixels in (1, 3, 8):
        result = shift_stability(_explain, images, masks, pixels)
        assert torch.allclose(result["input"]["spearman"], torch.ones(3)), pixels
        assert (result["fixed"]["spearman"] < 0.9).all(), "a map that stays put does not follow the image"
    # the shifted image's map is localized against the shifted mask: an image that is its mask keeps every score
    lesion_only = shift_stability(_explain, masks, masks, 4)["input"]
    for measure in ("pointing_game", "relevance_mass", "top_k_iou"):
        assert torch.equal(lesion_only[measure], torch.ones(3)), measure


def test_shift_moves_content_with_zero_fill_and_signs_from_the_seed():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    moved = shift(image, torch.tensor([[1, -2]]))
    assert torch.equal(moved[0, 0, 1:, :2], image[0, 0, :3, 2:])
    assert moved[0, 0, 0].eq(0).all() and moved[0, 0, :, 2:].eq(0).all()
    offsets = shift_offsets(64, 3, 2, seed=0)
    assert offsets.abs().eq(3).all() and (offsets > 0).any() and (offsets < 0).any()
    assert torch.equal(offsets, shift_offsets(64, 3, 2, seed=0)) and not torch.equal(
        offsets, shift_offsets(64, 3, 2, 1)
    )


def test_the_noise_snr_gives_the_documented_sigma():
    images = _images(batch=2) * torch.tensor([1.0, 0.25]).view(-1, 1, 1, 1)
    sigma = noise_sigma(images, snr_db=20)
    assert torch.allclose(sigma, images.double().flatten(1).std(1) / 10, rtol=1e-6), "std(x) / 10^(SNR/20)"
    big = images.repeat(1, 1, 8, 8)  # many pixels: the empirical noise level is close to sigma
    noise = gaussian_noise(big, 6, torch.Generator().manual_seed(0)) - big
    measured_snr = 20 * torch.log10(big.flatten(1).std(1) / noise.flatten(1).std(1))
    assert torch.allclose(measured_snr, torch.full((2,), 6.0), atol=0.1)


def test_rows_cover_every_method_perturbation_and_image():
    rows = robustness_test(_explain, _images(2), _masks(2), radii=[0.05], snr_db=[10, 0], shifts=[2], samples=2)
    kinds = {(r["kind"], r["size"]) for r in rows}
    assert kinds == {("clean", 0.0), ("uniform", 0.05), ("gaussian", 10.0), ("gaussian", 0.0), ("shift", 2.0)}
    assert len(rows) == 2 * len(kinds) * 2
    clean = [r for r in rows if r["kind"] == "clean" and r["method"] == "fixed"]
    assert set(clean[0]) == {"method", "kind", "size", "image", "pointing_game", "relevance_mass", "top_k_iou"}


class _Explainers:
    """Stands in for the run's ``Explainers``: ``maps`` as in :func:`_explain`, or an error."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fail:
            raise RuntimeError("explainer broke")
        return _explain(images)


def _engine(images: torch.Tensor, masks: torch.Tensor, stems: list[str]) -> SimpleNamespace:
    state = SimpleNamespace(output={"image": images}, batch={"image": images, "mask": masks, "stem": stems})
    return SimpleNamespace(state=state)


def _report(output_dir, section: RobustnessTest) -> EvaluationReport:
    inference = InferenceReport(output_dir)
    scorer = ExplanationScorer(torch.nn.Conv2d(1, 2, 1), inference)
    return EvaluationReport(output_dir, scorer, inference, bootstrap_samples=100, sections=[section])


def test_the_handler_collects_images_masks_and_stems_up_to_its_count():
    test = RobustnessTest(_Explainers(), images=3)
    images, masks = _images(2), _masks(2) * 0.9  # masks arrive as floats: binarized at 0.5
    test.collect(_engine(images, masks, ["a", "b"]))
    test.collect(_engine(images + 1, masks, ["c", "d"]))
    test.collect(_engine(images, masks, ["e", "f"]))
    assert test.stems == ["a", "b", "c"] and len(test.images) == len(test.masks) == 3
    assert torch.equal(test.images[2], images[0] + 1) and torch.equal(test.masks[0], (masks[0] > 0.5).float())
    failed = _engine(images, masks, ["x", "y"])
    failed.state.output = {"explanation_failure": "broken"}
    off = RobustnessTest(_Explainers(), images=2)
    off.collect(failed)
    assert off.images == [], "a batch whose explanation failed is not collected"


def test_the_section_writes_its_files_and_markdown_and_refuses_to_overwrite(tmp_path):
    test = RobustnessTest(_Explainers(), images=2, radii=[0.05], snr_db=[10], shifts=[2], samples=2)
    test.collect(_engine(_images(2), _masks(2), ["a", "b"]))
    test()
    report = _report(tmp_path, test)
    report.write()
    per_image = _read(tmp_path / "robustness_per_image.csv")
    assert {(r["method"], r["kind"], r["image"]) for r in per_image} >= {
        ("input", "shift", "a"),
        ("fixed", "clean", "b"),
    }
    summary = _read(tmp_path / "robustness.csv")
    sensitivity = {r["method"]: r for r in summary if r["measure"] == "max_sensitivity"}
    assert float(sensitivity["fixed"]["mean"]) == 0 and float(sensitivity["input"]["mean"]) > 0
    assert all(int(r["n"]) == 2 and float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in summary)
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    markdown = (tmp_path / "summary.md").read_text()
    assert "## Robustness to input perturbations" in markdown and "| input | " in markdown
    assert "Shifts at 2px: the most stable map by Spearman with clean map is input" in markdown
    # the paired comparison: the reference (the first method here; medxgan_ig in the bundle) minus each other method
    paired = {(r["kind"], r["measure"]): r for r in _read(tmp_path / "robustness_paired.csv")}
    sensitivity = paired[("uniform", "max_sensitivity")]
    assert sensitivity["reference"] == "fixed" and sensitivity["method"] == "input" and sensitivity["n"] == "2"
    assert float(sensitivity["ci_high"]) < 0 and sensitivity["verdict"] == "reference better", "0 minus a positive"
    assert ("clean", "relevance_mass") in paired and ("gaussian", "spearman") in paired
    assert "Paired: per image, fixed's value minus the other method's" in markdown and "(more robust)" in markdown
    tracked = report.tracked_metrics()
    assert tracked["fixed_robustness_uniform_0.05_max_sensitivity"] == 0
    assert tracked["input_robustness_shift_2_spearman"] == pytest.approx(1)
    with pytest.raises(FileExistsError):
        _report(tmp_path, test).write()


def test_a_failing_explainer_does_not_stop_the_report(tmp_path):
    test = RobustnessTest(_Explainers(fail=True), images=2)
    test.collect(_engine(_images(2), _masks(2), ["a", "b"]))
    test()
    assert "explainer broke" in test.failure
    _report(tmp_path, test).write()
    assert "The test failed: RuntimeError: explainer broke" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "robustness.csv").exists()


def test_the_evaluation_bundle_runs_it_and_zero_images_turn_it_off(tiny_demo, weights, tmp_path):
    def evaluate(out, images):
        workflow = evaluation_workflow(
            tiny_demo / "datalist.json",
            out,
            weights,
            methods=["gradient", "gradcam"],
            max_items=3,
            perturbation_steps=4,
            randomization_images=0,
            robustness_images=images,
            robustness_samples=1,
            bootstrap_samples=100,
            example_cases=1,
        )
        workflow.run()

    evaluate(tmp_path / "on", 2)
    rows = _read(tmp_path / "on" / "robustness_per_image.csv")
    stems = {r["stem"] for r in _read(tmp_path / "on" / "metrics_per_image.csv")}
    assert {r["method"] for r in rows} == {"gradient", "gradcam"} and len({r["image"] for r in rows}) == 2
    assert {r["image"] for r in rows} <= stems, "rows name the scored images"
    assert {r["kind"] for r in rows} == {"clean", "uniform", "gaussian", "shift"}
    assert "## Robustness to input perturbations" in (tmp_path / "on" / "summary.md").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_evaluation").experiment_id])
    assert "gradient_robustness_shift_8_spearman" in run.data.metrics
    assert run.data.params["robustness_images"] == "2"

    evaluate(tmp_path / "off", 0)
    assert not (tmp_path / "off" / "robustness.csv").exists()
    assert "Robustness" not in (tmp_path / "off" / "summary.md").read_text()
