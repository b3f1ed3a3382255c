"""The evaluation report's paired comparisons: the default map against every other method, image by image.

Two methods' separate bootstrap intervals (the summary table) overlap whenever the images vary more than the methods
differ; the per-image difference of the two scores removes that variation. :class:`PairedComparisons` is a section
of :class:`~medxgan_monai.handlers.EvaluationReport` (``evaluate.json`` lists it in ``evaluation_report#sections``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medxgan_monai.handlers.evaluation import _cell
from medxgan_monai.metrics.statistics import REFERENCE_BETTER, REFERENCE_WORSE, paired_comparisons

if TYPE_CHECKING:
    from medxgan_monai.handlers.evaluation import EvaluationReport

__all__ = ["DEFAULT_REFERENCE", "PairedComparisons", "difference_interval", "reference_method"]

logger = logging.getLogger(__name__)

#: the reference when none is named and it was evaluated: the bundle's default map
DEFAULT_REFERENCE = "medxgan_ig"


def reference_method(requested: str | None, methods: Sequence[str]) -> str | None:
    """The method a paired comparison compares with the others: ``requested`` if named, else
    :data:`DEFAULT_REFERENCE` when it was evaluated, else the first of ``methods`` (None without methods)."""
    if requested is not None:
        return requested
    return DEFAULT_REFERENCE if DEFAULT_REFERENCE in methods else next(iter(methods), None)


COLUMNS = ("reference", "method", "metric", "is_best_baseline", "mean_difference", "ci_low", "ci_high", "n", "verdict")

#: how a verdict shows in summary.md's cells (undecided shows nothing)
_MARKS = {REFERENCE_BETTER: " (better)", REFERENCE_WORSE: " (worse)"}


class PairedComparisons:
    """Per metric, the paired bootstrap interval of the per-image difference between a reference method and every
    other method (:func:`~medxgan_monai.metrics.paired_comparisons`), read from the report's scorer when it writes.

    Files: ``metrics_paired.csv`` (reference, method, metric, is_best_baseline, mean_difference, ci_low, ci_high, n,
    verdict); in ``summary.md``: the reference minus the best baseline per metric, then every baseline (one
    table per metric group); tracked
    metrics: ``paired_<metric>_vs_best_diff`` with ``_ci_low`` / ``_ci_high``. The intervals use the report's
    ``bootstrap_samples`` and ``seed``.

    Args:
        reference: the method compared with the others; default :data:`DEFAULT_REFERENCE` when it was evaluated,
            else the first evaluated method.
        methods: the methods the run explains, if known when the bundle is parsed: a ``reference`` not among them
            is refused at once rather than when the evaluation ends.
    """

    def __init__(self, reference: str | None = None, methods: Sequence[str] | None = None) -> None:
        if reference is not None and methods is not None and reference not in methods:
            raise ValueError(f"paired reference {reference!r} is not an evaluated method; methods: {list(methods)}")
        self.requested_reference = reference
        self.reference: str | None = None
        self.comparisons: list[dict] = []
        self.failure: str | None = None

    def write(self, report: EvaluationReport) -> None:
        """``metrics_paired.csv`` (only its header when fewer than two methods were scored)."""
        rows, metrics = report.scorer.rows, report.scorer.metrics
        methods = list(dict.fromkeys(row["method"] for row in rows))
        self.comparisons, self.failure = [], None
        self.reference = reference_method(self.requested_reference, methods)
        if self.reference is not None and self.reference not in methods:
            self.failure = f"the reference method {self.reference!r} has no scores (scored: {', '.join(methods)})"
            logger.warning("paired comparisons not computed: %s", self.failure)
        elif len(methods) > 1:
            self.comparisons = paired_comparisons(rows, metrics, self.reference, report.bootstrap_samples, report.seed)
        report.write_csv("metrics_paired.csv", COLUMNS, [[_cell(c[k]) for k in COLUMNS] for c in self.comparisons])

    def markdown(self, report: EvaluationReport) -> list[str]:
        lines = [f"## Paired comparisons{f': {self.reference} against each method' if self.reference else ''}", ""]
        if self.failure:
            return [*lines, f"Not computed: {self.failure}."]
        if not self.comparisons:
            return [*lines, "Not computed: fewer than two methods were scored."]
        metrics = report.scorer.metrics
        lines += [
            f"Per image, {self.reference}'s score minus the other method's, over the images both score; mean "
            "[95% paired bootstrap CI], the images resampled as pairs (metrics_paired.csv). The verdict is "
            "*better* or *worse* when the interval excludes 0 (on the metric's better or worse side), else "
            "*undecided*. The best baseline of a metric is the other method with the best mean in the summary table.",
            "",
            f"| metric | best baseline | {self.reference} − best baseline | n | verdict |",
            "|---|---|---|---|---|",
        ]
        for comparison in self.comparisons:
            if comparison["is_best_baseline"]:
                heading = metrics[comparison["metric"]].markdown_heading
                lines.append(
                    f"| {heading} | {comparison['method']} | {difference_interval(comparison)} | {comparison['n']} "
                    f"| {comparison['verdict']} |"
                )
        cells = {(c["method"], c["metric"]): c for c in self.comparisons}
        methods = list(dict.fromkeys(c["method"] for c in self.comparisons))
        groups: dict[str, list[str]] = {}  # one table per metric group, as the summary tables
        for metric, definition in metrics.items():
            if any((method, metric) in cells for method in methods):
                groups.setdefault(definition.group, []).append(metric)
        lines += ["", f"Every method: {self.reference} minus the method (a blank cell: no image scored by both)."]
        for group, compared in groups.items():
            lines += [
                "",
                f"**{group}**",
                "",
                "| method | " + " | ".join(metrics[m].markdown_heading for m in compared) + " |",
                "|---" * (len(compared) + 1) + "|",
            ]
            for method in methods:
                row = [method]
                for metric in compared:
                    cell = cells.get((method, metric))
                    row.append("" if cell is None else difference_interval(cell) + _MARKS.get(cell["verdict"], ""))
                lines.append("| " + " | ".join(row) + " |")
        return lines

    def tracked_metrics(self, report: EvaluationReport) -> dict[str, float]:
        """``paired_<metric>_vs_best_diff`` (reference minus the best baseline) and its ``_ci_low`` / ``_ci_high``."""
        tracked = {}
        for comparison in self.comparisons:
            if comparison["is_best_baseline"]:
                name = f"paired_{comparison['metric']}_vs_best_diff"
                tracked[name] = comparison["mean_difference"]
                tracked[f"{name}_ci_low"], tracked[f"{name}_ci_high"] = comparison["ci_low"], comparison["ci_high"]
        return tracked


def difference_interval(comparison: dict) -> str:
    """A paired comparison as ``+difference [+low, +high]`` for markdown."""
    return f"{comparison['mean_difference']:+.3f} [{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}]"
