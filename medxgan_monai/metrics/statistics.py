"""Summary statistics of per-image scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from medxgan_monai.metrics.table import ExplanationMetric

__all__ = [
    "REFERENCE_BETTER",
    "REFERENCE_WORSE",
    "UNDECIDED",
    "bootstrap_ci",
    "paired_bootstrap",
    "paired_comparisons",
    "summarize",
]

#: verdicts of a paired comparison: the 95% interval of reference - method excludes 0 on the better side, on the
#: worse side, or contains 0
REFERENCE_BETTER, REFERENCE_WORSE, UNDECIDED = "reference better", "reference worse", "undecided"


def bootstrap_ci(values, samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and the 2.5 / 97.5 percentiles of the bootstrap distribution of the mean (NaNs dropped), i.e. a 95%
    percentile-bootstrap confidence interval (Efron and Tibshirani 1993), with a fixed ``seed``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(samples, len(values)), replace=True).mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap(a, b, samples: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean per-image difference ``a - b`` over the images where both are finite, its 95% percentile-bootstrap
    interval and that number of images ``n`` (NaNs for all three statistics when ``n`` is 0).

    ``a[i]`` and ``b[i]`` are two methods' scores of the same image ``i``. Resampling the differences is resampling
    the image pairs, so this is :func:`bootstrap_ci` of the differences (same resampling, same ``seed`` rule); pairing
    removes the between-image variation that two separate intervals carry, so it can decide where they overlap.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same shape, got {a.shape} and {b.shape}")
    differences = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if differences.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    return (*bootstrap_ci(differences, samples, seed), int(differences.size))


def _verdict(low: float, high: float, higher_is_better: bool) -> str:
    """Whether the interval of reference - method excludes 0 in the better or the worse direction."""
    better, worse = (low > 0, high < 0) if higher_is_better else (high < 0, low > 0)
    return REFERENCE_BETTER if better else REFERENCE_WORSE if worse else UNDECIDED


def _scores(per_stem: Mapping[str, Mapping], stems: Sequence[str], metric: str) -> np.ndarray:
    """One method's ``metric`` of the images ``stems`` (NaN where it has no value or no row)."""
    return np.asarray([float(per_stem[s].get(metric, np.nan)) if s in per_stem else np.nan for s in stems], dtype=float)


def paired_comparisons(
    rows: Sequence[Mapping],
    metrics: Mapping[str, ExplanationMetric],
    reference: str,
    samples: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Paired comparison of ``reference`` with every other method of ``rows``, per metric.

    ``rows`` are per-image scores (dicts with ``stem``, ``method`` and one value per metric, as the evaluation's
    ``ExplanationScorer`` collects them); images pair by ``stem``. Per metric and other method: ``{"reference",
    "method", "metric", "is_best_baseline", "mean_difference", "ci_low", "ci_high", "n", "verdict"}`` with the
    :func:`paired_bootstrap` of reference - method over the images both score (NaN is dropped pairwise) and the
    verdict (:data:`REFERENCE_BETTER` when the interval excludes 0 on the metric's better side,
    :data:`REFERENCE_WORSE` on its worse side, else :data:`UNDECIDED`). Pairs with no image in common (a metric that
    does not apply to one of the two, e.g. counterfactual validity of a method without counterfactual) are left out.
    Per metric, one compared method is the *best baseline*: the best mean over its own scored images in the metric's
    direction (``metrics[name].higher_is_better``; the first method in row order on a tie), as in the summary table.

    Example::

        comparisons = paired_comparisons(scorer.rows, METRICS, "medxgan_ig")
        [c for c in comparisons if c["is_best_baseline"]]   # one row per metric: reference - best baseline
    """
    scores: dict[str, dict[str, Mapping]] = {}
    for row in rows:
        per_stem = scores.setdefault(row["method"], {})
        if row["stem"] in per_stem:
            raise ValueError(f"two rows for image {row['stem']!r} and method {row['method']!r}: cannot pair them")
        per_stem[row["stem"]] = row
    if reference not in scores:
        raise ValueError(f"reference method {reference!r} has no scores; methods: {list(scores)}")
    stems = list(scores[reference])
    comparisons = []
    for metric, definition in metrics.items():
        paired, own_means = [], {}
        for method, per_stem in scores.items():
            if method == reference:
                continue
            mean, low, high, n = paired_bootstrap(
                _scores(scores[reference], stems, metric), _scores(per_stem, stems, metric), samples, seed
            )
            if n == 0:
                continue
            own = _scores(per_stem, list(per_stem), metric)
            own_means[method] = float(own[np.isfinite(own)].mean())
            verdict = _verdict(low, high, definition.higher_is_better)
            paired.append(
                {
                    "reference": reference,
                    "method": method,
                    "metric": metric,
                    "is_best_baseline": False,
                    "mean_difference": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                    "verdict": verdict,
                }
            )
        if paired:
            pick = max if definition.higher_is_better else min
            best = pick(own_means, key=own_means.get)
            for comparison in paired:
                comparison["is_best_baseline"] = comparison["method"] == best
        comparisons.extend(paired)
    return comparisons


def summarize(
    rows: Sequence[Mapping], metrics: Sequence[str], by: str = "method", samples: int = 2000, seed: int = 0
) -> list[dict]:
    """Per group of ``rows`` (dicts with a ``by`` key and metric values) and metric: ``{by, "metric", "mean",
    "ci_low", "ci_high", "n"}`` with the 95% bootstrap interval of :func:`bootstrap_ci`; ``n`` counts the finite
    values (NaN marks a metric that does not apply to an image). Groups keep their first-seen order.

    Example::

        summarize([{"method": "ig", "pointing_game": 1.0}, ...], ["pointing_game"])
    """
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row)
    summary = []
    for group, members in groups.items():
        for metric in metrics:
            values = np.asarray([float(m.get(metric, np.nan)) for m in members], dtype=float)
            finite = int(np.isfinite(values).sum())
            mean, low, high = bootstrap_ci(values, samples, seed) if finite else (np.nan, np.nan, np.nan)
            summary.append({by: group, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high, "n": finite})
    return summary
