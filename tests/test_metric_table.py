"""The one table of per-image explanation metrics: its entries, ``score_maps`` against the metric functions, a metric
plugged in by one table entry, and the inversion comparison counting counterfactual validity by the table's rule."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from monai.utils import CommonKeys
from torch import nn

import medxgan_monai.metrics.table as table_module
from benchmarks.compare_inversion import validity_rate
from medxgan_monai.explain import Attribution
from medxgan_monai.handlers import EvaluationReport, ExplanationScorer, InferenceReport
from medxgan_monai.handlers.explanation import ATTRIBUTIONS, SECONDS
from medxgan_monai.metrics import (
    METRICS,
    NEEDS,
    ExplanationMetric,
    counterfactual_validity,
    deletion_insertion,
    metric_table,
    otsu_iou,
    pixel_auroc,
    pointing_game,
    relevance_mass,
    score_maps,
    top_k_iou,
)

SIZE = 16
LOCALIZATION = {
    "pointing_game": pointing_game,
    "relevance_mass": relevance_mass,
    "top_k_iou": top_k_iou,
    "pixel_auroc": pixel_auroc,
    "otsu_iou": otsu_iou,
}


def _batch(count: int = 4):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator)
    maps = torch.rand(count, 1, SIZE, SIZE, generator=generator)
    masks = torch.zeros(count, 1, SIZE, SIZE)
    masks[:, :, 4:10, 5:12] = 1
    with torch.random.fork_rng():  # a fixed classifier without moving other tests' random state
        torch.manual_seed(0)
        classifier = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 2)).eval()
    return images, maps, masks, classifier


def test_table_lists_each_metric_once_in_report_order_with_direction_and_needs():
    assert list(METRICS) == [
        "pointing_game",
        "relevance_mass",
        "top_k_iou",
        "pixel_auroc",
        "otsu_iou",
        "deletion_auc",
        "insertion_auc",
        "counterfactual_validity",
    ]
    assert all(name == metric.name for name, metric in METRICS.items())
    assert [m.title for m in METRICS.values()][:3] == ["pointing game", "relevance mass", "top-|GT| IoU"]
    assert [name for name, m in METRICS.items() if not m.higher_is_better] == ["deletion_auc"]
    assert METRICS["deletion_auc"].heading == "deletion AUC ↓" and METRICS["otsu_iou"].heading == "Otsu IoU ↑"
    assert {name: set(m.needs) for name, m in METRICS.items() if m.needs != {"mask"}} == {
        "deletion_auc": {"classifier"},
        "insertion_auc": {"classifier"},
        "counterfactual_validity": {"counterfactual"},
    }
    assert all(m.needs <= NEEDS for m in METRICS.values())
    with pytest.raises(TypeError):
        METRICS["new"] = METRICS["otsu_iou"]  # the shared table is read-only: plug in by a copied table
    with pytest.raises(ValueError, match="unique"):
        metric_table(METRICS["otsu_iou"], METRICS["otsu_iou"])
    with pytest.raises(ValueError, match="known needs"):
        ExplanationMetric("x", "x", True, {"segmentation"}, lambda inputs: inputs.maps)


def test_score_maps_equals_the_metric_functions_and_is_nan_where_a_need_is_missing(monkeypatch):
    images, maps, masks, classifier = _batch()
    probabilities = torch.tensor([0.9, 0.2, 0.8, 0.6])
    counterfactual = torch.tensor([0.1, 0.1, 0.7, 0.3])
    calls = []

    def counted_deletion_insertion(*args, **kwargs):
        calls.append(args)
        return deletion_insertion(*args, **kwargs)

    monkeypatch.setattr(table_module, "deletion_insertion", counted_deletion_insertion)
    everything = score_maps(
        maps,
        masks=masks,
        images=images,
        classifier=classifier,
        probabilities=probabilities,
        counterfactual_probability=counterfactual,
        perturbation_steps=5,
    )
    assert list(everything) == list(METRICS) and len(calls) == 1, "deletion and insertion come from one call"
    for name, function in LOCALIZATION.items():
        assert torch.equal(everything[name], function(maps, masks)), name
    curves = deletion_insertion(classifier, images, maps, 1, 5)
    assert torch.equal(everything["deletion_auc"], curves.deletion_auc)
    assert torch.equal(everything["insertion_auc"], curves.insertion_auc)
    expected = counterfactual_validity(probabilities, counterfactual)
    torch.testing.assert_close(everything["counterfactual_validity"], expected, rtol=0, atol=0, equal_nan=True)

    calls.clear()
    masks_only = score_maps(maps, masks=masks, probabilities=probabilities)  # no classifier, no counterfactual
    assert not calls, "no curves without a classifier"
    for name in ("deletion_auc", "insertion_auc", "counterfactual_validity"):
        assert masks_only[name].shape == (4,) and masks_only[name].isnan().all(), name
    assert torch.equal(masks_only["relevance_mass"], relevance_mass(maps, masks))
    without_masks = score_maps(maps, images=images, classifier=classifier, perturbation_steps=5)
    assert all(without_masks[name].isnan().all() for name in LOCALIZATION)
    assert torch.equal(without_masks["deletion_auc"], curves.deletion_auc)


def _top_decile_mass(inputs) -> torch.Tensor:
    """Fraction of the map's mass in its 10% highest pixels (a metric that needs nothing but the maps)."""
    values = inputs.maps.flatten(1).float()
    top = values.topk(max(1, values.shape[1] // 10), dim=1).values
    return top.sum(1) / values.sum(1).clamp_min(1e-12)


def test_a_metric_added_to_a_copied_table_is_scored_and_reported(tmp_path):
    images, maps, masks, classifier = _batch()
    concentration = ExplanationMetric("top_decile_mass", "top-10% mass", True, set(), _top_decile_mass)
    metrics = metric_table(*METRICS.values(), concentration)
    assert "top_decile_mass" not in METRICS

    report = InferenceReport(tmp_path / "out")
    scorer = ExplanationScorer(classifier, report, perturbation_steps=4, examples=1, metrics=metrics)
    batch = {"mask": masks, "stem": [f"case{i}" for i in range(4)], "source": [f"case{i}.nii.gz" for i in range(4)]}
    output = {
        CommonKeys.IMAGE: images,
        CommonKeys.LABEL: torch.ones(4),
        CommonKeys.PRED: classifier(images),
        ATTRIBUTIONS: {"gradient": Attribution(maps)},
        SECONDS: {"gradient": 0.01},
    }
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output, iteration=1, metrics={}))
    scorer(engine)
    EvaluationReport(tmp_path / "out", scorer, report, bootstrap_samples=50).write()

    with open(tmp_path / "out" / "metrics_per_image.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0])[-len(metrics) :] == list(metrics), "the copied table's columns, the new one last"
    expected = _top_decile_mass(SimpleNamespace(maps=maps))
    assert [float(row["top_decile_mass"]) for row in rows] == pytest.approx(expected.tolist(), rel=1e-5)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "top-10% mass ↑" in summary and "| s / image |" in summary


def test_compare_inversion_counts_validity_by_the_evaluation_rule():
    probabilities = torch.tensor([0.9, 0.2, 0.8, 0.1])
    counterfactual = torch.tensor([0.1, 0.1, 0.7, 0.9])
    # images called negative have nothing to flip: left out (NaN), not counted as failures
    assert validity_rate(probabilities, counterfactual) == pytest.approx(0.5)
    assert validity_rate(probabilities, counterfactual) == pytest.approx(
        float(counterfactual_validity(probabilities, counterfactual).nanmean())
    )
    assert math.isnan(validity_rate(torch.tensor([0.1, 0.3]), torch.tensor([0.0, 0.9]))), "no positive: undefined"


def test_the_readme_evaluation_table_reads_the_metric_table():
    """The README's evaluation table has the columns ``summary.md`` writes: the metric table's headings, in order."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    header = "| method | " + " | ".join(m.heading.replace("|", "\\|") for m in METRICS.values()) + " | s / image |"
    assert header in readme.splitlines()
