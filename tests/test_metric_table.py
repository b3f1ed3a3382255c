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
from medxgan_monai.handlers.evaluation import IDENTITY_COLUMNS
from medxgan_monai.handlers.explanation import ATTRIBUTIONS, SECONDS
from medxgan_monai.metrics import (
    METRICS,
    NEEDS,
    ExplanationMetric,
    counterfactual_validity,
    deletion_insertion,
    entropy,
    metric_table,
    otsu_iou,
    pixel_auroc,
    pointing_game,
    relevance_mass,
    road,
    score_maps,
    sparseness,
    top_k_iou,
)
from medxgan_monai.metrics.table import _in_subset

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


GROUPS = {
    "localization": ["pointing_game", "relevance_mass", "top_k_iou", "pixel_auroc", "otsu_iou"],
    "faithfulness": [
        "deletion_auc",
        "insertion_auc",
        "deletion_mean_auc",
        "deletion_blur_auc",
        "road_morf_auc",
        "road_lerf_auc",
    ],
    "counterfactual": ["counterfactual_validity"],
    "complexity": ["sparseness", "entropy"],
}


def test_table_lists_each_metric_once_in_report_order_with_direction_needs_and_group():
    assert list(METRICS) == [name for names in GROUPS.values() for name in names]
    assert {group: [n for n, m in METRICS.items() if m.group == group] for group in GROUPS} == GROUPS
    assert all(name == metric.name for name, metric in METRICS.items())
    assert [m.title for m in METRICS.values()][:3] == ["pointing game", "relevance mass", "top-|GT| IoU"]
    assert [name for name, m in METRICS.items() if not m.higher_is_better] == [
        "deletion_auc",
        "deletion_mean_auc",
        "deletion_blur_auc",
        "road_morf_auc",
        "entropy",
    ]
    assert METRICS["deletion_auc"].heading == "deletion AUC ↓" and METRICS["otsu_iou"].heading == "Otsu IoU ↑"
    assert METRICS["top_k_iou"].markdown_heading == "top-\\|GT\\| IoU ↑"
    assert {name: set(m.needs) for name, m in METRICS.items() if m.needs != {"mask"}} == {
        **{name: {"classifier"} for name in GROUPS["faithfulness"]},
        "counterfactual_validity": {"counterfactual"},
        "sparseness": set(),
        "entropy": set(),
    }
    assert all(m.needs <= NEEDS for m in METRICS.values())
    with pytest.raises(TypeError):
        METRICS["new"] = METRICS["otsu_iou"]  # the shared table is read-only: plug in by a copied table
    with pytest.raises(ValueError, match="unique"):
        metric_table(METRICS["otsu_iou"], METRICS["otsu_iou"])
    with pytest.raises(ValueError, match="known needs"):
        ExplanationMetric("x", "x", True, {"segmentation"}, lambda inputs: inputs.maps)
    assert ExplanationMetric("x", "x", True, set(), lambda inputs: inputs.maps).group == "other"


def test_score_maps_equals_the_metric_functions_and_is_nan_where_a_need_is_missing(monkeypatch):
    images, maps, masks, classifier = _batch(8)
    probabilities = torch.tensor([0.9, 0.2, 0.8, 0.6, 0.9, 0.7, 0.8, 0.6])
    counterfactual = torch.tensor([0.1, 0.1, 0.7, 0.3, 0.2, 0.6, 0.1, 0.1])
    calls = []

    def counted(function):
        def call(*args, **kwargs):
            calls.append((function.__name__, args[5] if len(args) > 5 else None))
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(table_module, "deletion_insertion", counted(deletion_insertion))
    monkeypatch.setattr(table_module, "road", counted(road))
    everything = score_maps(
        maps,
        masks=masks,
        images=images,
        classifier=classifier,
        probabilities=probabilities,
        counterfactual_probability=counterfactual,
        perturbation_steps=5,
    )
    assert list(everything) == list(METRICS)
    assert calls == [
        ("deletion_insertion", "zero"),
        ("deletion_insertion", "mean"),
        ("deletion_insertion", "blur"),
        ("road", None),
    ], "each curve once: insertion with the zero fill, ROAD's MoRF with its LeRF"
    for name, function in LOCALIZATION.items():
        assert torch.equal(everything[name], function(maps, masks)), name
    curves = deletion_insertion(classifier, images, maps, 1, 5)
    assert torch.equal(everything["deletion_auc"], curves.deletion_auc)
    assert torch.equal(everything["insertion_auc"], curves.insertion_auc)
    expected = counterfactual_validity(probabilities, counterfactual)
    torch.testing.assert_close(everything["counterfactual_validity"], expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(everything["sparseness"], sparseness(maps)) and torch.equal(everything["entropy"], entropy(maps))

    # the costly curves score the subset chosen by each image's pixels, NaN elsewhere
    subset = torch.tensor([_in_subset(image) for image in images])
    assert 0 < subset.sum() < len(images), "this batch has images in and out of the subset"
    for fill in ("mean", "blur"):
        on_subset = deletion_insertion(classifier, images[subset], maps[subset], 1, 5, fill, insertion=False)
        torch.testing.assert_close(everything[f"deletion_{fill}_auc"][subset], on_subset.deletion_auc)
        assert everything[f"deletion_{fill}_auc"][~subset].isnan().all()
    road_curves = road(classifier, images[subset], maps[subset])
    torch.testing.assert_close(everything["road_morf_auc"][subset], road_curves.morf_auc)
    torch.testing.assert_close(everything["road_lerf_auc"][subset], road_curves.lerf_auc)
    assert everything["road_lerf_auc"][~subset].isnan().all()
    alone = score_maps(maps[subset][:1], images=images[subset][:1], classifier=classifier, perturbation_steps=5)
    torch.testing.assert_close(alone["road_morf_auc"], road_curves.morf_auc[:1]), "the same image in another batch"
    # with names (the evaluation passes the stems), the name chooses, whatever the pixels' last bits are
    names = [f"case_{index:03d}" for index in range(len(images))]
    by_name = torch.tensor([_in_subset(name) for name in names])
    assert 0 < by_name.sum() < len(images) and not torch.equal(by_name, subset), "names pick another subset here"
    named = score_maps(maps, images=images, classifier=classifier, perturbation_steps=5, names=names)
    assert torch.equal(named["road_morf_auc"].isfinite(), by_name)
    rounded = score_maps(maps, images=images + 1e-6, classifier=classifier, perturbation_steps=5, names=names)
    assert torch.equal(rounded["road_morf_auc"].isfinite(), by_name), "a rounding difference keeps the subset"
    with pytest.raises(ValueError, match="3 names for 8 maps"):
        score_maps(maps, images=images, classifier=classifier, names=names[:3])

    calls.clear()
    masks_only = score_maps(maps, masks=masks, probabilities=probabilities)  # no classifier, no counterfactual
    assert not calls, "no curves without a classifier"
    for name in (*GROUPS["faithfulness"], "counterfactual_validity"):
        assert masks_only[name].shape == (8,) and masks_only[name].isnan().all(), name
    assert torch.equal(masks_only["relevance_mass"], relevance_mass(maps, masks))
    assert torch.equal(masks_only["sparseness"], sparseness(maps)), "complexity needs the maps only"
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
    metric_columns = list(rows[0])[len(IDENTITY_COLUMNS) : len(IDENTITY_COLUMNS) + len(metrics)]
    assert metric_columns == list(metrics), "the copied table's columns, the new one last"
    expected = _top_decile_mass(SimpleNamespace(maps=maps))
    assert [float(row["top_decile_mass"]) for row in rows] == pytest.approx(expected.tolist(), rel=1e-5)
    summary = (tmp_path / "out" / "summary.md").read_text()
    # one table per group (over all images, then over the detected ones), seconds in the first table only
    headings = [line for line in summary.splitlines() if line.startswith("###")]
    assert [h.split(" (")[0] for h in headings] == [
        f"{level} {group}"
        for level in ("###", "####")
        for group in ("Localization", "Faithfulness", "Counterfactual", "Complexity", "Other")
    ]
    tables = [line for line in summary.splitlines() if line.startswith("| method |")]
    assert len(tables) == 10 and [t.endswith("| s / image |") for t in tables] == [True, *[False] * 4] * 2
    assert tables[4] == "| method | top-10% mass ↑ |", "a metric without a group lands in 'other'"
    assert "### Localization (n = 4 images per method and metric)" in summary


def test_compare_inversion_counts_validity_by_the_evaluation_rule():
    probabilities = torch.tensor([0.9, 0.2, 0.8, 0.1])
    counterfactual = torch.tensor([0.1, 0.1, 0.7, 0.9])
    # images called negative have nothing to flip: left out (NaN), not counted as failures
    assert validity_rate(probabilities, counterfactual) == pytest.approx(0.5)
    assert validity_rate(probabilities, counterfactual) == pytest.approx(
        float(counterfactual_validity(probabilities, counterfactual).nanmean())
    )
    assert math.isnan(validity_rate(torch.tensor([0.1, 0.3]), torch.tensor([0.0, 0.9]))), "no positive: undefined"


def test_the_readme_evaluation_tables_read_the_metric_table():
    """The README's evaluation tables have the columns ``summary.md`` writes: one table per metric group with the
    group's headings in table order, seconds per image in the first."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    groups = list(dict.fromkeys(m.group for m in METRICS.values()))
    for position, group in enumerate(groups):
        headings = [m.markdown_heading for m in METRICS.values() if m.group == group]
        header = "| method | " + " | ".join(headings + (["s / image"] if position == 0 else [])) + " |"
        assert header in readme, f"README.md lacks the {group} table's header: {header}"
