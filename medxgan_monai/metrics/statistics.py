"""Summary statistics of per-image scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "summarize"]


def bootstrap_ci(values, samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and the 2.5 / 97.5 percentiles of the bootstrap distribution of the mean (NaNs dropped), i.e. a 95%
    percentile-bootstrap confidence interval (Efron and Tibshirani 1993), with a fixed ``seed``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(samples, len(values)), replace=True).mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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
