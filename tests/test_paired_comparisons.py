"""Paired comparisons: the paired bootstrap of per-image differences, the verdicts, the best baseline, the report
section's files and its place in the evaluation bundle."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import evaluation_workflow

from medxgan_monai.handlers import EvaluationReport, InferenceReport, PairedComparisons
from medxgan_monai.metrics import METRICS, bootstrap_ci, paired_bootstrap, paired_comparisons
from medxgan_monai.metrics.table import metric_table

LOCALIZATION = metric_table(METRICS["pointing_game"], METRICS["relevance_mass"], METRICS["deletion_auc"])


def _rows(scores: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Scorer-like rows from {method: {metric: per-image values}} (images img0, img1, ...)."""
    rows = []
    for method, metrics in scores.items():
        for index in range(len(next(iter(metrics.values())))):
            rows.append({"stem": f"img{index}", "method": method, **{m: v[index] for m, v in metrics.items()}})
    return rows


def _read(path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_paired_bootstrap_is_the_bootstrap_of_the_differences_over_pairs_both_score():
    rng = np.random.default_rng(1)
    a, b = rng.random(30), rng.random(30)
    a[3], b[7] = np.nan, np.inf  # dropped pairwise: both images leave both series
    mean, low, high, n = paired_bootstrap(a, b, samples=500, seed=3)
    keep = np.isfinite(a) & np.isfinite(b)
    assert n == 28 == keep.sum()
    assert (mean, low, high) == bootstrap_ci(a[keep] - b[keep], 500, 3), "the one resampling rule"
    assert mean == pytest.approx(np.mean(a[keep] - b[keep]))
    assert all(math.isnan(v) for v in paired_bootstrap([np.nan, 1.0], [1.0, np.nan])[:3])
    assert paired_bootstrap([np.nan, 1.0], [1.0, np.nan])[3] == 0
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_pairing_decides_what_two_overlapping_intervals_cannot():
    # images vary a lot (0..1), the reference is better by 0.05 on every one of them
    base = np.linspace(0.0, 0.9, 40)
    mean, low, high, _ = paired_bootstrap(base + 0.05, base)
    assert low > 0 and mean == pytest.approx(0.05)
    assert bootstrap_ci(base + 0.05)[1] < bootstrap_ci(base)[2], "the separate intervals overlap"


def test_a_reference_better_on_every_image_is_better_and_a_zero_mean_difference_is_undecided():
    rng = np.random.default_rng(0)
    base = rng.random(20)
    noise = rng.normal(0, 0.1, 20)
    rows = _rows(
        {
            "medxgan_ig": {"pointing_game": list(base + 0.2), "relevance_mass": list(base), "deletion_auc": list(base)},
            # better on relevance mass (higher) and worse on deletion AUC (lower is better)
            "ig": {"pointing_game": list(base), "relevance_mass": list(base - 0.1), "deletion_auc": list(base - 0.1)},
            # the same on average: differences +noise and -noise around 0
            "gradcam": {
                "pointing_game": list(base + 0.2 + np.concatenate([noise[:10], -noise[:10]])),
                "relevance_mass": list(base),
                "deletion_auc": list(base),
            },
        }
    )
    comparisons = paired_comparisons(rows, LOCALIZATION, "medxgan_ig", samples=1000)
    by_key = {(c["method"], c["metric"]): c for c in comparisons}
    assert len(comparisons) == 6 and all(c["reference"] == "medxgan_ig" and c["n"] == 20 for c in comparisons)
    pointing = by_key[("ig", "pointing_game")]
    assert pointing["mean_difference"] == pytest.approx(0.2) and pointing["ci_low"] > 0
    assert pointing["verdict"] == "reference better"
    assert by_key[("ig", "relevance_mass")]["verdict"] == "reference better"
    assert by_key[("ig", "deletion_auc")]["verdict"] == "reference worse", "the metric's direction decides"
    undecided = by_key[("gradcam", "pointing_game")]
    assert undecided["mean_difference"] == pytest.approx(0.0, abs=1e-12)
    assert undecided["ci_low"] < 0 < undecided["ci_high"] and undecided["verdict"] == "undecided"
    # best baseline: highest mean for pointing game and relevance mass (gradcam), lowest deletion AUC (ig)
    best = {c["metric"]: c["method"] for c in comparisons if c["is_best_baseline"]}
    assert best == {"pointing_game": "gradcam", "relevance_mass": "gradcam", "deletion_auc": "ig"}


def test_nan_images_are_dropped_pairwise_and_a_metric_no_pair_scores_is_left_out():
    rows = _rows(
        {
            "ref": {"pointing_game": [1.0, np.nan, 1.0, 0.0], "relevance_mass": [0.5] * 4, "deletion_auc": [0.2] * 4},
            "a": {"pointing_game": [0.0, 1.0, np.nan, 0.0], "relevance_mass": [0.4] * 4, "deletion_auc": [np.nan] * 4},
        }
    )
    by_metric = {c["metric"]: c for c in paired_comparisons(rows, LOCALIZATION, "ref", samples=200)}
    assert by_metric["pointing_game"]["n"] == 2 and by_metric["pointing_game"]["mean_difference"] == 0.5
    assert by_metric["relevance_mass"]["n"] == 4
    assert "deletion_auc" not in by_metric, "no image scored by both"
    rows.append({"stem": "img0", "method": "a", "pointing_game": 1.0})
    with pytest.raises(ValueError, match="two rows for image 'img0'"):
        paired_comparisons(rows, LOCALIZATION, "ref")
    with pytest.raises(ValueError, match="'missing' has no scores"):
        paired_comparisons(rows[:-1], LOCALIZATION, "missing")


def _write(tmp_path, rows, section, overwrite=False) -> EvaluationReport:
    """``section`` written as the report writes it (the report's own tables are not this test's subject)."""
    scorer = SimpleNamespace(rows=rows, metrics=LOCALIZATION)
    report = EvaluationReport(tmp_path, scorer, InferenceReport(tmp_path), bootstrap_samples=200, overwrite=overwrite)
    tmp_path.mkdir(parents=True, exist_ok=True)
    section.write(report)
    return report


def test_the_section_writes_csv_markdown_and_tracked_metrics_and_refuses_to_overwrite(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.random(12)
    rows = _rows(
        {
            "gradient": {"pointing_game": list(base), "relevance_mass": list(base), "deletion_auc": list(base)},
            "medxgan_ig": {"pointing_game": list(base + 1), "relevance_mass": list(base), "deletion_auc": list(base)},
            "ig": {"pointing_game": list(base), "relevance_mass": list(base - 1), "deletion_auc": list(base - 1)},
        }
    )
    section = PairedComparisons()
    report = _write(tmp_path, rows, section)
    assert section.reference == "medxgan_ig", "the default map is the reference when evaluated"
    written = _read(tmp_path / "metrics_paired.csv")
    assert list(written[0]) == [
        "reference",
        "method",
        "metric",
        "is_best_baseline",
        "mean_difference",
        "ci_low",
        "ci_high",
        "n",
        "verdict",
    ]
    assert len(written) == 6 and {r["method"] for r in written} == {"gradient", "ig"}
    pointing = next(r for r in written if r["metric"] == "pointing_game" and r["is_best_baseline"] == "True")
    assert float(pointing["mean_difference"]) == pytest.approx(1.0) and pointing["verdict"] == "reference better"
    markdown = "\n".join(section.markdown(report))
    assert "## Paired comparisons: medxgan_ig against each method" in markdown
    assert "| pointing game ↑ | gradient | +1.000 [+1.000, +1.000] | 12 | reference better |" in markdown
    assert "| ig | +1.000 [+1.000, +1.000] (better) | +1.000 [+1.000, +1.000] (better) |" in markdown
    assert "**localization**" in markdown and "**faithfulness**" in markdown, "one table per metric group"
    tracked = section.tracked_metrics(report)
    assert tracked["paired_pointing_game_vs_best_diff"] == pytest.approx(1.0)
    assert tracked["paired_deletion_auc_vs_best_diff_ci_low"] == pytest.approx(1.0), "best deletion: ig (lowest)"
    with pytest.raises(FileExistsError):
        _write(tmp_path, rows, PairedComparisons())
    _write(tmp_path, rows, PairedComparisons(reference="ig"), overwrite=True)
    assert {r["reference"] for r in _read(tmp_path / "metrics_paired.csv")} == {"ig"}


def test_the_reference_defaults_to_the_first_method_and_a_missing_one_is_reported(tmp_path):
    rows = _rows({m: {k: [0.5, 0.6] for k in LOCALIZATION} for m in ("gradient", "ig")})
    first = PairedComparisons()
    _write(tmp_path / "first", rows, first)
    assert first.reference == "gradient" and {r["method"] for r in _read(tmp_path / "first" / "metrics_paired.csv")}
    missing = PairedComparisons(reference="occlusion")
    report = _write(tmp_path / "missing", rows, missing)
    assert _read(tmp_path / "missing" / "metrics_paired.csv") == [] and missing.tracked_metrics(report) == {}
    assert "Not computed: the reference method 'occlusion' has no scores" in missing.markdown(report)[-1]
    with pytest.raises(ValueError, match="not an evaluated method"):
        PairedComparisons(reference="occlusion", methods=["gradient", "ig"])


def test_the_evaluation_bundle_writes_metrics_paired_csv(tiny_demo, weights, tmp_path):
    out = tmp_path / "out"
    workflow = evaluation_workflow(
        tiny_demo / "datalist.json",
        out,
        weights,
        methods=["gradient", "ig"],
        max_items=3,
        perturbation_steps=4,
        randomization_images=0,
        bootstrap_samples=200,
        example_cases=1,
    )
    workflow.run()
    stems = {row["stem"] for row in _read(out / "metrics_per_image.csv")}
    paired = _read(out / "metrics_paired.csv")
    assert {r["reference"] for r in paired} == {"gradient"} and {r["method"] for r in paired} == {"ig"}
    assert {r["metric"] for r in paired} >= {"pointing_game", "relevance_mass", "deletion_auc", "insertion_auc"}
    assert all(int(r["n"]) == len(stems) for r in paired if r["metric"] in ("pointing_game", "deletion_auc"))
    assert all(0 < int(r["n"]) <= len(stems) for r in paired), "metrics of a subset pair over that subset"
    assert "## Paired comparisons: gradient against each method" in (out / "summary.md").read_text()


def test_two_runs_are_compared_image_by_image(tmp_path, capsys):
    """``scripts/compare_runs.py``: run B minus run A per image (pairs by stem, in any row order), verdicts in each
    metric's better direction, and the seconds ratio."""
    from benchmarks.compare_runs import main

    columns = ["stem", "method", "seconds", "pointing_game", "deletion_auc"]
    runs = {
        "a": [("img0", 1.0, 1, 0.5), ("img1", 1.0, 0, 0.5), ("img2", 1.0, 0, 0.5), ("img3", 1.0, 1, 0.5)],
        "b": [("img3", 0.5, 1, 0.3), ("img2", 0.5, 1, 0.3), ("img1", 0.5, 1, 0.3), ("img0", 0.5, 1, 0.3)],
    }
    for name, rows in runs.items():
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "metrics_per_image.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(columns)
            writer.writerows([(stem, "medxgan_ig", *values) for stem, *values in rows])
            writer.writerow(("img0", "ig", 9.0, 0, 0.9))  # another method's row is ignored
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    table = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    assert "+0.500" in table["pointing game"] and table["pointing game"].endswith("| 4 | undecided |")
    assert "-0.200 [-0.200, -0.200]" in table["deletion AUC"] and table["deletion AUC"].endswith("B better |")
    assert "0.50x" in table["seconds per image"]
    with pytest.raises(ValueError, match="no rows of method"):
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--method", "gradcam"])
