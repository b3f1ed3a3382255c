"""Ignite handlers that score explanations against ground-truth masks and write the evaluation report.

In ``evaluate.json`` they follow the :class:`~medxgan_monai.handlers.ExplanationHandler` on a MONAI evaluator:
:class:`ExplanationScorer` scores every explained batch, :class:`RandomizationTest` runs the sanity test on the first
images at the end, and :class:`EvaluationReport` writes the CSVs, the markdown summary and the charts, and hands the
summary to the MLflow handler through ``engine.state.metrics``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.utils import CommonKeys
from torch import nn

from medxgan_monai.explain.registry import Explainers
from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.handlers.explanation import ATTRIBUTIONS, FAILURE, SECONDS, InferenceReport, explained_output
from medxgan_monai.io.atomic import atomic_write_csv, atomic_write_text
from medxgan_monai.io.charts import ExampleCase, write_example_cases, write_metric_bars, write_randomization_curves
from medxgan_monai.metrics import (
    METRICS,
    ExplanationMetric,
    bootstrap_ci,
    cascading_randomization,
    randomization_layers,
    score_maps,
    summarize,
)
from medxgan_monai.networks.classifier import FrozenClassifier, class_probabilities

__all__ = ["METRICS", "EvaluationReport", "ExplanationScorer", "RandomizationTest"]

logger = logging.getLogger(__name__)


IDENTITY_COLUMNS = ("stem", "source", "label", "probability", "method", "seconds")
#: per-image values an explainer reports about its own maps (``Attribution.details``), written beside the metrics:
#: ``completeness_gap`` is |sum of the attributions - (p(x) - p(baseline))| of the Integrated-Gradients-type maps
#: (``ig``, ``medxgan_ig``, ``medxgan_lig``), in probability units; NaN for the other methods
DETAIL_COLUMNS = ("completeness_gap",)


@dataclass
class _Candidate:
    score: float
    case: ExampleCase


class ExplanationScorer:
    """Score every method's maps of every explained batch with every metric of a metric table.

    Per image and method: each metric of ``metrics`` (:func:`~medxgan_monai.metrics.score_maps`; by default
    :data:`~medxgan_monai.metrics.METRICS`: pointing game, relevance mass, top-|GT| IoU, pixel AUROC, Otsu IoU against
    the mask, deletion and insertion AUC against the classifier, counterfactual validity of medXGAN maps only, of the
    counterfactual behind the map: G(z_a, 0) for ``medxgan`` and ``medxgan_lig``, the residual counterfactual for
    ``medxgan_ig``; NaN for the others and for images the classifier calls negative) and the explainer's seconds per
    image (the medXGAN maps come from one explanation and share its time). Rows go to :attr:`rows`; the ``examples``
    best and worst images per method by ``ranking_metric`` are kept for the report's panels; predictions and
    failures go to ``report``.

    Attach after :class:`~medxgan_monai.handlers.ExplanationHandler` on an evaluator with ``decollate=False`` whose
    batches carry ``mask``, ``stem`` and ``source``.

    Args:
        classifier: the explained classifier (for deletion and insertion).
        report: collects predictions and per-image problems (``predictions.csv``, ``errors.csv``).
        target: the explained class.
        perturbation_steps: steps of the deletion and insertion curves.
        ranking_metric: the metric that picks the best and worst examples.
        examples: how many best and how many worst images to keep per method.
        metrics: the metric table (name -> :class:`~medxgan_monai.metrics.ExplanationMetric`); the report's columns.
    """

    def __init__(
        self,
        classifier: nn.Module,
        report: InferenceReport,
        target: int = 1,
        perturbation_steps: int = 20,
        ranking_metric: str = "relevance_mass",
        examples: int = 4,
        mask_key: str = "mask",
        image_key: str = CommonKeys.IMAGE,
        metrics: Mapping[str, ExplanationMetric] = METRICS,
    ) -> None:
        if ranking_metric not in metrics:
            raise ValueError(f"unknown ranking metric {ranking_metric!r}; one of {list(metrics)}")
        self.metrics = metrics
        self.classifier = FrozenClassifier.wrap(classifier)
        self.report = report
        self.target = target
        self.perturbation_steps = perturbation_steps
        self.ranking_metric = ranking_metric
        self.examples = examples
        self.mask_key, self.image_key = mask_key, image_key
        self.rows: list[dict] = []
        self.candidates: dict[str, list[_Candidate]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch, output = engine.state.batch, explained_output(engine, type(self).__name__)
        stems, sources = list(batch["stem"]), [str(s) for s in batch["source"]]
        if FAILURE in output:
            for stem, source in zip(stems, sources, strict=True):
                self.report.add_problem(stem, source, output[FAILURE])
            return
        try:
            rows = self._score(batch, output, stems, sources)
        except Exception as error:  # one batch's failure must not stop the evaluation
            logger.exception("scoring failed for iteration %d", engine.state.iteration)
            for stem, source in zip(stems, sources, strict=True):
                self.report.add_problem(stem, source, f"scoring failed: {type(error).__name__}: {error}")
            return
        self.rows.extend(rows)
        for index, (stem, source) in enumerate(zip(stems, sources, strict=True)):
            self.report.add_prediction(stem, source, output, index)

    def _score(self, batch: Mapping, output: Mapping, stems: list[str], sources: list[str]) -> list[dict]:
        images = torch.as_tensor(output[self.image_key])
        masks = (torch.as_tensor(batch[self.mask_key]).detach().cpu().float() > 0.5).float()
        labels = torch.as_tensor(output[CommonKeys.LABEL]).detach().cpu().view(-1)
        probabilities = class_probabilities(output[CommonKeys.PRED]).detach().cpu()[:, self.target]
        rows = []
        for method, attribution in output[ATTRIBUTIONS].items():
            maps = attribution.maps.detach()
            counterfactual = attribution.counterfactual_probability
            scores = score_maps(
                maps,
                masks=masks,
                images=images,
                classifier=self.classifier,
                probabilities=probabilities,
                counterfactual_probability=counterfactual,
                target=self.target,
                perturbation_steps=self.perturbation_steps,
                metrics=self.metrics,
                names=stems,
            )
            seconds = output[SECONDS].get(method, float("nan"))
            details = {
                name: attribution.details[name].detach().cpu().view(-1)
                for name in DETAIL_COLUMNS
                if name in attribution.details
            }
            for index, (stem, source) in enumerate(zip(stems, sources, strict=True)):
                row = {
                    "stem": stem,
                    "source": source,
                    "label": int(labels[index]),
                    "probability": float(probabilities[index]),
                    "method": method,
                    "seconds": float(seconds),
                }
                row.update({name: float(values[index]) for name, values in scores.items()})
                row.update(
                    {name: float(details[name][index]) if name in details else math.nan for name in DETAIL_COLUMNS}
                )
                rows.append(row)
            self._keep_examples(method, images, masks, maps, rows[-len(stems) :])
        return rows

    def _keep_examples(self, method, images, masks, maps, rows) -> None:
        candidates = self.candidates.setdefault(method, [])
        for index, row in enumerate(rows):
            score = row[self.ranking_metric]
            if not math.isfinite(score):
                continue
            # MONAI arrays are (x, y): transpose so tiles show rows as a viewer would
            case = ExampleCase(
                f"{row['stem']}\n{self.metrics[self.ranking_metric].title} {score:.2f}",
                images[index, 0].detach().cpu().numpy().T,
                masks[index, 0].numpy().T > 0.5,
                maps[index, 0].detach().cpu().numpy().T,
            )
            candidates.append(_Candidate(score, case))
        candidates.sort(key=lambda c: c.score, reverse=self.metrics[self.ranking_metric].higher_is_better)
        if len(candidates) > 2 * self.examples:
            del candidates[self.examples : len(candidates) - self.examples]

    def example_cases(self, method: str) -> tuple[list[ExampleCase], list[ExampleCase]]:
        """The best and the worst kept examples of ``method`` (best first; worst last)."""
        candidates = self.candidates.get(method, [])
        best = candidates[: self.examples]
        worst = candidates[self.examples :] if len(candidates) > self.examples else []
        return [c.case for c in best], [c.case for c in worst]


class RandomizationTest:
    """The cascading model-parameter randomization test (:func:`~medxgan_monai.metrics.cascading_randomization`)
    of every method, on the first ``images`` images the evaluator explains, run when the evaluation ends.

    After the run, :attr:`layers` holds the re-initialized layers in cascade order and :attr:`correlations` the
    per-method (L, B) Spearman correlations; if the test itself fails, :attr:`failure` says why (the evaluation's
    other results are kept).

    Args:
        network: the classifier the explainers use (a ``FrozenClassifier`` is unwrapped); its weights are
            re-initialized in place during the test and restored afterwards.
        explainers: the run's :class:`~medxgan_monai.explain.Explainers` (every method it runs is tested).
        images: how many images to test.
        layers: layer names in cascade order; default: the network's parametrised modules ``depth`` levels down,
            output first.
    """

    def __init__(
        self,
        network: nn.Module,
        explainers: Explainers,
        images: int = 8,
        layers: Sequence[str] | None = None,
        depth: int = 2,
        seed: int = 0,
        image_key: str = CommonKeys.IMAGE,
    ) -> None:
        self.network = network.network if isinstance(network, FrozenClassifier) else network
        self.explainers = explainers
        self.count = images
        self.requested_layers = list(layers) if layers is not None else None
        self.depth, self.seed, self.image_key = depth, seed, image_key
        self.images: list[torch.Tensor] = []
        self.layers: list[str] = []
        self.correlations: dict[str, torch.Tensor] = {}
        self.failure: str | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        if FAILURE in output or len(self.images) >= self.count:
            return
        batch = torch.as_tensor(output[self.image_key]).detach()
        self.images.extend(batch[: self.count - len(self.images)])

    def __call__(self, engine: Engine | None = None) -> None:
        if self.count <= 0 or not self.images:
            return
        layers = self.requested_layers or list(reversed(randomization_layers(self.network, self.depth)))
        try:
            self.layers, self.correlations = cascading_randomization(
                self.network, self.explainers.maps, torch.stack(self.images), layers, self.seed
            )
        except Exception as error:  # the sanity test must not cost the evaluation's other results
            logger.exception("randomization test failed")
            self.failure = f"{type(error).__name__}: {error}"

    def write(self, report: EvaluationReport) -> None:
        """``randomization.csv`` (per method and stage: mean Spearman, bootstrap CI) and ``randomization.png``."""
        if not self.correlations:
            return
        header = ["method", "stage", "layer", "mean_spearman", "ci_low", "ci_high", "n"]
        rows = []
        for method, values in self.correlations.items():
            for stage, (layer, per_image) in enumerate(zip(self.layers, values.numpy(), strict=True), start=1):
                mean, low, high = bootstrap_ci(per_image, report.bootstrap_samples, report.seed)
                rows.append([method, stage, layer, *(_cell(v) for v in (mean, low, high)), len(per_image)])
        report.write_csv("randomization.csv", header, rows)
        correlations = {m: v.numpy() for m, v in self.correlations.items()}
        write_randomization_curves(
            report.output_dir / "randomization.png", self.layers, correlations, overwrite=report.overwrite
        )

    def markdown(self, report: EvaluationReport) -> list[str]:
        if self.count <= 0:
            return []
        lines = ["## Randomization sanity test (Adebayo et al. 2018)", ""]
        if self.failure:
            return [*lines, f"The test failed: {self.failure}"]
        if not self.correlations:
            return [*lines, "Not run (no image was explained)."]
        stages = sorted({0, len(self.layers) // 2, len(self.layers) - 1})
        lines += [
            f"Spearman correlation between each method's map on {len(self.images)} image(s) and its map after the "
            "classifier's layers are re-initialized one group at a time, from the output back (cumulative). A map "
            "that explains the model should decorrelate (towards 0); one that stays near 1 shows the image, "
            "not the model.",
            "",
            "| method | " + " | ".join(f"after `{self.layers[s]}` ({s + 1}/{len(self.layers)})" for s in stages) + " |",
            "|---" * (len(stages) + 1) + "|",
        ]
        for method, values in self.correlations.items():
            means = values.mean(1).numpy()
            lines.append(f"| {method} | " + " | ".join(f"{means[s]:.3f}" for s in stages) + " |")
        return lines

    def tracked_metrics(self, report: EvaluationReport) -> dict[str, float]:
        """``<method>_randomization_final``: the mean correlation after every layer is re-initialized."""
        return {
            f"{method}_randomization_final": float(values[-1].mean()) for method, values in self.correlations.items()
        }


def _detected(rows: list[dict]) -> list[dict]:
    """The scored rows of images the classifier calls positive."""
    return [row for row in rows if float(row["probability"]) >= 0.5]


def _metric_groups(metrics: Mapping[str, ExplanationMetric]) -> dict[str, dict[str, ExplanationMetric]]:
    """The metrics by :attr:`~medxgan_monai.metrics.ExplanationMetric.group`, groups in order of first appearance."""
    groups: dict[str, dict[str, ExplanationMetric]] = {}
    for name, metric in metrics.items():
        groups.setdefault(metric.group, {})[name] = metric
    return groups


def _summary_table(summary: list[dict], metrics: Mapping[str, ExplanationMetric], seconds: bool = True) -> list[str]:
    """Markdown lines of a :func:`summarize` result: one row per method, best mean per column in bold, and the
    seconds per image as the last column if ``seconds``."""
    methods = list(dict.fromkeys(row["method"] for row in summary))
    cells = {(row["method"], row["metric"]): row for row in summary}
    header = [m.markdown_heading for m in metrics.values()] + (["s / image"] if seconds else [])
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    best = {}
    for metric, definition in metrics.items():
        means = [cells[(m, metric)]["mean"] for m in methods if cells[(m, metric)]["n"]]
        if means:
            best[metric] = max(means) if definition.higher_is_better else min(means)
    for method in methods:
        row = [method]
        for metric in metrics:
            cell = cells[(method, metric)]
            text = summary_interval(cell)
            row.append(f"**{text}**" if cell["n"] and cell["mean"] == best.get(metric) else text)
        if seconds:
            cell = cells[(method, "seconds")]
            row.append("-" if cell["n"] == 0 else f"{cell['mean']:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _summary_tables(summary: list[dict], metrics: Mapping[str, ExplanationMetric], level: str = "###") -> list[str]:
    """One :func:`_summary_table` per metric group, each under a ``level`` heading naming the group and the range of
    images its means are over (n: the costly metrics score a subset, some apply to some methods or images only);
    seconds per image in the first table only."""
    lines: list[str] = []
    for position, (group, members) in enumerate(_metric_groups(metrics).items()):
        counts = [row["n"] for row in summary if row["metric"] in members and row["n"]]
        span = (
            "" if not counts else f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"
        )
        scored = f" (n = {span} images per method and metric)" if span else ""
        lines += [
            *([""] if position else []),
            f"{level} {group.capitalize()}{scored}",
            "",
            *_summary_table(summary, members, seconds=position == 0),
        ]
    return lines


def _completeness_table(summary: list[dict], rows: list[dict]) -> list[str]:
    """Markdown lines on the completeness gap of the methods that report one (the IG-type maps); none if none do."""
    reported = [row for row in summary if row["metric"] == "completeness_gap" and row["n"]]
    if not reported:
        return []
    lines = [
        "### Completeness of the Integrated Gradients maps",
        "",
        "|sum of the attributions - (P(x) - P(baseline))| per image, in probability units: the error of the path "
        "integral's quadrature (0 for exact IG; more steps make it smaller).",
        "",
        "| method | mean gap [95% CI] | largest gap | n |",
        "|---|---|---|---|",
    ]
    for row in reported:
        gaps = [r["completeness_gap"] for r in rows if r["method"] == row["method"]]
        largest = max(gap for gap in gaps if math.isfinite(gap))
        interval = f"{row['mean']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        lines.append(f"| {row['method']} | {interval} | {largest:.4f} | {row['n']} |")
    return lines


class EvaluationReport:
    """Write an evaluation's results when the evaluator's epoch ends, and put the summary into its metrics.

    Files in ``output_dir``: ``metrics_per_image.csv`` (one row per image and method), ``metrics_summary.csv``
    (method, metric, mean, 95% bootstrap CI, n), ``metrics_summary_detected.csv`` (the same over the images the
    classifier calls positive), ``summary.md`` (both as markdown tables, one per metric group, then each section's),
    ``metrics.png`` (bars with CIs), ``examples_<method>.png`` (best and worst cases), each section's files (the
    randomization test: ``randomization.csv`` and ``randomization.png``), and the ``report``'s ``predictions.csv`` /
    ``errors.csv``.
    ``engine.state.metrics`` gains ``<method>_<metric>`` (mean) with ``_ci_low`` / ``_ci_high``, and each section's
    tracked metrics, for an MLflow handler attached after this one.

    A *section* is a further part of the report with its own files, e.g. :class:`RandomizationTest`. It has three
    methods, each given this report (its ``output_dir``, ``scorer``, ``bootstrap_samples``, ``seed``, ``overwrite``
    and :meth:`write_csv`): ``write(report)`` writes its files, ``markdown(report) -> list[str]`` its part of
    ``summary.md``, ``tracked_metrics(report) -> dict[str, float]`` its metrics for MLflow. Sections run in order,
    after the metric tables.

    Args:
        output_dir: destination folder.
        scorer: the :class:`ExplanationScorer` of the run.
        report: the run's :class:`~medxgan_monai.handlers.InferenceReport`.
        randomization: the run's :class:`RandomizationTest`, if any (the first section).
        description: a line saying what was evaluated (datalist, section), for ``summary.md``.
        sections: further sections, in report order.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        scorer: ExplanationScorer,
        report: InferenceReport,
        randomization: RandomizationTest | None = None,
        description: str = "",
        bootstrap_samples: int = 2000,
        seed: int = 0,
        overwrite: bool = False,
        sections: Sequence = (),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.scorer, self.report = scorer, report
        self.sections = [*([randomization] if randomization is not None else []), *sections]
        self.description = description
        self.bootstrap_samples, self.seed = bootstrap_samples, seed
        self.overwrite = overwrite
        self.summary: list[dict] = []
        self.detected_summary: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def write(self, engine: Engine | None = None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows, metrics = self.scorer.rows, self.scorer.metrics
        summarized = [*metrics, *DETAIL_COLUMNS, "seconds"]
        self.summary = summarize(rows, summarized, "method", self.bootstrap_samples, self.seed)
        detected = _detected(rows)
        self.detected_summary = summarize(detected, summarized, "method", self.bootstrap_samples, self.seed)
        columns = [*IDENTITY_COLUMNS, *metrics, *DETAIL_COLUMNS]
        self.write_csv("metrics_per_image.csv", columns, [[_cell(row[c]) for c in columns] for row in rows])
        summary_columns = ["method", "metric", "mean", "ci_low", "ci_high", "n"]
        for name, summary in (
            ("metrics_summary.csv", self.summary),
            ("metrics_summary_detected.csv", self.detected_summary),
        ):
            self.write_csv(name, summary_columns, [[_cell(r[c]) for c in summary_columns] for r in summary])
        if rows:
            bar_titles = {
                name: f"{m.title} ({'higher' if m.higher_is_better else 'lower'} is better)"
                for name, m in metrics.items()
            }
            write_metric_bars(self.output_dir / "metrics.png", self.summary, bar_titles, overwrite=self.overwrite)
            for method in dict.fromkeys(row["method"] for row in rows):
                best, worst = self.scorer.example_cases(method)
                if best or worst:
                    path = self.output_dir / f"examples_{method}.png"
                    ranking = metrics[self.scorer.ranking_metric].title
                    title = f"{method}: best (top) and worst (bottom) images by {ranking}; mask outlined in white"
                    columns = max(1, self.scorer.examples)
                    write_example_cases(path, best + worst, columns, title, overwrite=self.overwrite)
        for section in self.sections:
            section.write(self)
        atomic_write_text(self.output_dir / "summary.md", self.markdown(), overwrite=self.overwrite)
        if engine is not None:
            engine.state.metrics.update(self.tracked_metrics())
        self.report.write(engine)

    def write_csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
        """Write ``output_dir/name`` atomically (refusing an existing file unless ``overwrite``)."""
        atomic_write_csv(self.output_dir / name, header, rows, overwrite=self.overwrite, lineterminator="\n")

    def tracked_metrics(self) -> dict[str, float]:
        """``<method>_<metric>`` means and CI bounds of the summary (finite values only)."""
        tracked = {}
        for row in self.summary:
            if row["n"] == 0:
                continue
            name = f"{row['method']}_{row['metric']}"
            tracked.update({name: row["mean"], f"{name}_ci_low": row["ci_low"], f"{name}_ci_high": row["ci_high"]})
        for section in self.sections:
            tracked.update(section.tracked_metrics(self))
        return tracked

    def markdown(self) -> str:
        """The summary as markdown: one metrics table per metric group (best mean per column in bold), over all
        scored images, then over those the classifier detects; then each section's part."""
        images = len({row["stem"] for row in self.scorer.rows})
        lines = [
            "# Explanation evaluation",
            "",
            f"{images} image(s) scored{' from ' + self.description if self.description else ''}; "
            f"{len(self.report.problems)} skipped (see errors.csv). "
            "Mean [95% bootstrap CI] over images; arrows give the better direction; the best mean per column is bold.",
            "",
        ]
        lines += _summary_tables(self.summary, self.scorer.metrics)
        completeness = _completeness_table(self.summary, self.scorer.rows)
        lines += ["", *completeness] if completeness else []
        detected = len({row["stem"] for row in _detected(self.scorer.rows)})
        lines += [
            "",
            "## Positives the classifier detects (P(positive) >= 0.5)",
            "",
            f"{detected} of the {images} image(s): where the classifier misses a lesion, a faithful explanation need "
            "not point at it (metrics_summary_detected.csv).",
            "",
            *_summary_tables(self.detected_summary, self.scorer.metrics, level="####"),
        ]
        for section in self.sections:
            part = section.markdown(self)
            if part:
                lines += ["", *part]
        return "\n".join(lines) + "\n"


def summary_interval(cell: Mapping | None) -> str:
    """A summary cell (``mean``, ``ci_low``, ``ci_high``, ``n``) as ``mean [low, high]`` for markdown; ``-`` when no
    image was scored."""
    if cell is None or not cell["n"]:
        return "-"
    return f"{cell['mean']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)
