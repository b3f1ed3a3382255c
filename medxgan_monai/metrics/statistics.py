"""Summary statistics of per-image scores."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci"]


def bootstrap_ci(values, samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and the 2.5 / 97.5 percentiles of the bootstrap distribution of the mean (NaNs dropped), i.e. a 95%
    percentile-bootstrap confidence interval (Efron and Tibshirani 1993), with a fixed ``seed``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(samples, len(values)), replace=True).mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
