"""Charts of an evaluation: metric bars with confidence intervals, randomization and robustness curves, best and
worst cases.

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

__all__ = [
    "ExampleCase",
    "write_example_cases",
    "write_metric_bars",
    "write_randomization_curves",
    "write_robustness_curves",
]


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


def write_robustness_curves(
    path: str | os.PathLike,
    summary: Sequence[Mapping],
    kinds: Mapping[str, str],
    measures: Mapping[str, str],
    reference_kind: str | None = None,
    harder_when_smaller: Sequence[str] = (),
    overwrite: bool = False,
) -> None:
    """One panel per perturbation kind and measure: each method's mean with its 95% CI (error bars) against the
    perturbation size; where ``reference_kind`` rows hold the measure (the unperturbed maps), a dotted line in the
    method's colour marks that reference.

    Args:
        summary: rows ``{"method", "kind", "size", "measure", "mean", "ci_low", "ci_high"}``.
        kinds: perturbation kind -> x-axis label, one row of panels each, in display order.
        measures: measure -> panel title, in display order (a kind gets a panel for each measure it has rows of).
        harder_when_smaller: kinds whose perturbation grows as the size falls (an SNR): their axis is reversed, so
            every panel has the strongest perturbation on the right.
    """
    plt = _pyplot()
    methods = list(dict.fromkeys(row["method"] for row in summary))
    colours = dict(zip(methods, plt.get_cmap("tab10")(np.arange(len(methods)) % 10), strict=True))
    panels = [
        (kind, measure)
        for kind in kinds
        for measure in measures
        if any(row["kind"] == kind and row["measure"] == measure for row in summary)
    ]
    rows_of = {kind: [panel for panel in panels if panel[0] == kind] for kind in kinds}
    columns = max([1, *(len(p) for p in rows_of.values())])
    shown = [kind for kind in kinds if rows_of[kind]] or list(kinds)[:1]
    figure, axes = plt.subplots(len(shown), columns, figsize=(3.4 * columns, 2.9 * len(shown)), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for row_axes, kind in zip(axes, shown, strict=True):
        for axis, (_, measure) in zip(row_axes, rows_of[kind], strict=False):
            axis.axis("on")
            for method in methods:
                points = sorted(
                    (float(r["size"]), float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]))
                    for r in summary
                    if r["method"] == method and r["kind"] == kind and r["measure"] == measure
                )
                if not points:
                    continue
                sizes, means, low, high = (np.array(values) for values in zip(*points, strict=True))
                errors = np.nan_to_num(np.stack([means - low, high - means]))
                axis.errorbar(
                    sizes, means, yerr=errors, marker="o", markersize=3, capsize=2, label=method, color=colours[method]
                )
                reference = [
                    float(r["mean"])
                    for r in summary
                    if r["method"] == method and r["kind"] == reference_kind and r["measure"] == measure
                ]
                if reference and math.isfinite(reference[0]):
                    axis.axhline(reference[0], color=colours[method], linestyle=":", linewidth=0.8)
            if kind in harder_when_smaller:
                axis.invert_xaxis()
            axis.set_xlabel(kinds[kind], fontsize=8)
            axis.set_title(f"{kind}: {measures[measure]}", fontsize=9)
            axis.tick_params(labelsize=7)
    handles, labels = next(
        (axis.get_legend_handles_labels() for axis in axes.ravel() if axis.get_legend_handles_labels()[0]), ([], [])
    )
    if handles:
        figure.legend(
            handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 8), bbox_to_anchor=(0.5, -0.02)
        )
    if reference_kind is not None:
        figure.suptitle(f"dotted: the {reference_kind} maps' value", fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
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
