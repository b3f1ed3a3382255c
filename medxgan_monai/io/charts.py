"""Charts of an evaluation: metric bars with confidence intervals, randomization curves, best and worst cases.

Drawn with matplotlib's non-interactive Agg backend and written atomically as PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medxgan_monai.io.atomic import atomic_output
from medxgan_monai.io.figures import saliency_overlay

__all__ = ["ExampleCase", "write_example_cases", "write_metric_bars", "write_randomization_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike, overwrite: bool) -> None:
    plt = _pyplot()
    try:
        with atomic_output(path, overwrite=overwrite) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def write_metric_bars(
    path: str | os.PathLike,
    summary: Sequence[Mapping],
    metrics: Mapping[str, str],
    overwrite: bool = False,
) -> None:
    """One bar chart per metric: each method's mean with its 95% CI as an error bar.

    Args:
        summary: rows ``{"method", "metric", "mean", "ci_low", "ci_high"}``
            (:func:`medxgan_monai.metrics.summarize`).
        metrics: metric name -> axis title, in display order.
    """
    plt = _pyplot()
    methods = list(dict.fromkeys(row["method"] for row in summary))
    columns = min(4, len(metrics))
    figure, axes = plt.subplots(
        math.ceil(len(metrics) / columns), columns, figsize=(3.2 * columns, 2.8 * math.ceil(len(metrics) / columns))
    )
    axes = np.atleast_1d(axes).ravel()
    colours = plt.get_cmap("tab10")(np.arange(len(methods)) % 10)
    for axis, (metric, title) in zip(axes, metrics.items(), strict=False):
        rows = {row["method"]: row for row in summary if row["metric"] == metric}
        means = np.array([rows.get(m, {}).get("mean", np.nan) for m in methods], dtype=float)
        low = np.array([rows.get(m, {}).get("ci_low", np.nan) for m in methods], dtype=float)
        high = np.array([rows.get(m, {}).get("ci_high", np.nan) for m in methods], dtype=float)
        # a metric that does not apply to a method (NaN) gets no bar rather than a bar at 0
        errors = np.nan_to_num(np.stack([means - low, high - means]))
        axis.bar(range(len(methods)), means, yerr=errors, color=colours, capsize=3)
        axis.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        axis.set_title(title, fontsize=9)
    for axis in axes[len(metrics) :]:
        axis.axis("off")
    figure.tight_layout()
    _save(figure, path, overwrite)


def write_randomization_curves(
    path: str | os.PathLike,
    layers: Sequence[str],
    correlations: Mapping[str, np.ndarray],
    overwrite: bool = False,
) -> None:
    """Mean Spearman correlation (with the trained model's map) per method as the classifier's layers are
    re-initialized from the output back to the input; the band is one standard error of the mean over images.

    Args:
        layers: the re-initialized layer after each stage, in cascade order.
        correlations: method -> (L, B) correlations.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5.0, 0.6 * len(layers) + 2), 3.6))
    stages = np.arange(len(layers) + 1)
    lowest = 0.0
    for method, values in correlations.items():
        values = np.concatenate([np.ones((1, values.shape[1])), np.asarray(values, dtype=float)])
        mean = values.mean(1)
        error = values.std(1) / math.sqrt(max(values.shape[1], 1))
        lowest = min(lowest, float(np.nanmin(mean - error)))
        axis.plot(stages, mean, marker="o", markersize=3, label=method)
        axis.fill_between(stages, mean - error, mean + error, alpha=0.15)
    axis.set_xticks(stages, ["trained", *layers], rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("Spearman correlation with trained map")
    axis.axhline(0, color="gray", linewidth=0.5)
    axis.set_ylim(min(-0.2, lowest - 0.05), 1.05)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    _save(figure, path, overwrite)


@dataclass(frozen=True)
class ExampleCase:
    """One scored image to show: its title, image (H, W) in [0, 1], binary mask and saliency map in [0, 1]."""

    title: str
    image: np.ndarray
    mask: np.ndarray
    saliency: np.ndarray


def write_example_cases(
    path: str | os.PathLike,
    cases: Sequence[ExampleCase],
    columns: int = 4,
    title: str = "",
    overwrite: bool = False,
) -> None:
    """A grid of saliency overlays with the ground-truth mask outlined in white, one titled tile per case."""
    plt = _pyplot()
    rows = max(1, math.ceil(len(cases) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows))
    axes = np.atleast_1d(axes).ravel()
    for axis in axes:
        axis.axis("off")
    for axis, case in zip(axes, cases, strict=False):
        axis.imshow(saliency_overlay(case.image, case.saliency, opacity=0.7))
        if case.mask.any() and not case.mask.all():
            axis.contour(case.mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        axis.set_title(case.title, fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _save(figure, path, overwrite)
