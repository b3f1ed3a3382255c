"""The evaluation report's robustness section: how much every method's map changes under small input perturbations.

medXGAN's paper claims that combining medXGAN with Integrated Gradients makes explanations "more robust to noise"
(Dravid et al. 2022). :class:`RobustnessTest` measures it for every evaluated method on the first images of the run
(:func:`~medxgan_monai.metrics.robustness.robustness_test`: max-sensitivity under uniform noise, stability and
localization under Gaussian noise at given SNRs and under small rigid shifts). It is an Ignite handler (collects
images and masks, runs at the end) and a section of :class:`~medxgan_monai.handlers.EvaluationReport`
(``evaluate.json`` lists it in ``evaluation_report#sections``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from monai.utils import CommonKeys

from medxgan_monai.explain.registry import Explainers
from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.handlers.comparisons import difference_interval, reference_method
from medxgan_monai.handlers.evaluation import _cell, summary_interval
from medxgan_monai.handlers.explanation import FAILURE, VolumeKeys
from medxgan_monai.io.charts import write_robustness_curves
from medxgan_monai.metrics.robustness import CLEAN, MEASURES, PERTURBATIONS, robustness_test
from medxgan_monai.metrics.statistics import REFERENCE_BETTER, REFERENCE_WORSE, paired_comparisons, summarize

if TYPE_CHECKING:
    from medxgan_monai.handlers.evaluation import EvaluationReport

__all__ = ["RobustnessTest"]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("method", "kind", "size", "measure", "mean", "ci_low", "ci_high", "n")
PAIRED_COLUMNS = (
    "reference",
    "method",
    "kind",
    "size",
    "measure",
    "mean_difference",
    "ci_low",
    "ci_high",
    "n",
    "verdict",
)
#: the measure each perturbation kind is compared by in the summary's table and sentences
HEADLINE = {"uniform": "max_sensitivity", "gaussian": "spearman", "shift": "spearman"}
#: how a size shows in headings and tracked metric names
UNITS = {"uniform": "r={:g}", "gaussian": "{:g}dB", "shift": "{:g}px"}


class RobustnessTest:
    """Robustness of every method's maps on the first ``images`` images the evaluator explains, run when the
    evaluation ends (:func:`~medxgan_monai.metrics.robustness.robustness_test` on the run's ``Explainers``).

    Collects each explained batch's images (the evaluator's output), masks (``batch[mask_key]``, binarized at 0.5)
    and stems until it has ``images``; ``images=0`` turns it off. After the run, :attr:`rows` holds one row per
    method, perturbation, size and image; if the test fails, :attr:`failure` says why (the evaluation's other
    results are kept).

    As a report section it writes ``robustness_per_image.csv`` (method, kind, size, image, one column per measure),
    ``robustness.csv`` (method, kind, size, measure, mean, 95% bootstrap CI, n, with the report's
    ``bootstrap_samples`` and ``seed``), ``robustness.png`` (each measure against the perturbation size, one line per
    method), ``robustness_paired.csv`` (per perturbation, size and measure, the paired bootstrap of the reference
    method minus every other method over the tested images, with a verdict, as ``metrics_paired.csv``: this is the
    test of the paper's claim that medXGAN + IG is more robust than IG and than the medXGAN map alone), its part of
    ``summary.md`` and the tracked metrics ``<method>_robustness_<kind>_<size>_<measure>``.

    Args:
        explainers: the run's :class:`~medxgan_monai.explain.Explainers` (every method it runs is tested; each
            perturbation is one call for all methods, so the medXGAN maps share one inversion).
        images: how many images to test.
        radii: uniform-noise radii of the max-sensitivity (images in [0, 1]).
        snr_db: signal-to-noise ratios (dB) of the Gaussian noise.
        shifts: rigid shifts in pixels along every axis.
        samples: uniform draws per radius (the max-sensitivity is the largest change over them).
        seed: seed of every draw.
        reference: the method the paired comparisons compare with every other one (default: ``medxgan_ig`` when
            evaluated, else the first method; :func:`~medxgan_monai.handlers.comparisons.reference_method`).
    """

    def __init__(
        self,
        explainers: Explainers,
        images: int = 8,
        radii: Sequence[float] = (0.02, 0.1),
        snr_db: Sequence[float] = (20.0, 10.0),
        shifts: Sequence[int] = (2, 4, 8),
        samples: int = 3,
        seed: int = 0,
        image_key: str = CommonKeys.IMAGE,
        mask_key: str = "mask",
        reference: str | None = None,
    ) -> None:
        if samples < 1:
            raise ValueError(f"robustness samples must be at least 1, got {samples}")
        self.explainers = explainers
        self.count = images
        self.radii = [float(r) for r in radii]
        self.snr_db = [float(s) for s in snr_db]
        self.shifts = [int(s) for s in shifts]
        self.samples, self.seed = samples, seed
        self.image_key, self.mask_key = image_key, mask_key
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.stems: list[str] = []
        self.rows: list[dict] = []
        self.summary: list[dict] = []
        self.requested_reference = reference
        self.comparisons: list[dict] = []
        self.failure: str | None = None
        self._slices_left_out = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        wanted = self.count - len(self.images)
        if FAILURE in output or wanted <= 0:
            return
        images = torch.as_tensor(output[self.image_key]).detach()
        # the slices of volumes are not images of this test: rows name images by stem, which a volume's slices share
        chosen = [i for i, number in enumerate(VolumeKeys.of(batch, len(images)).slice) if number < 0][:wanted]
        if len(chosen) < min(len(images), wanted) and not self._slices_left_out:
            self._slices_left_out = True
            logger.info("robustness test: the slices of volumes are left out; it runs on the 2D images")
        images = images[torch.as_tensor(chosen, dtype=torch.long, device=images.device)]
        masks = (torch.as_tensor(batch[self.mask_key]).detach().cpu().float() > 0.5).float()[chosen]
        count = len(images)
        # rows name images by stem (as metrics_per_image.csv does); by position when the batch has none
        stems = (
            [batch["stem"][i] for i in chosen] if "stem" in batch else range(len(self.stems), len(self.stems) + count)
        )
        self.stems.extend(str(stem) for stem in stems)
        self.images.extend(images)
        self.masks.extend(masks)

    def __call__(self, engine: Engine | None = None) -> None:
        if self.count <= 0 or not self.images:
            return
        start = time.perf_counter()
        try:
            rows = robustness_test(
                self.explainers.maps,
                torch.stack(self.images),
                torch.stack(self.masks),
                self.radii,
                self.snr_db,
                self.shifts,
                self.samples,
                self.seed,
            )
        except Exception as error:  # the robustness test must not cost the evaluation's other results
            logger.exception("robustness test failed")
            self.failure = f"{type(error).__name__}: {error}"
            return
        self.rows = [{**row, "image": self.stems[row["image"]]} for row in rows]
        logger.info("robustness test: %d image(s) in %.1f s", len(self.images), time.perf_counter() - start)

    def _summarize(self, report: EvaluationReport) -> list[dict]:
        """Per method, kind, size and the measures its rows hold: mean, bootstrap CI and n (:func:`summarize`)."""
        measured: dict[tuple, set[str]] = {}
        keyed = []
        for row in self.rows:
            group = (row["method"], row["kind"], row["size"])
            measured.setdefault(group, set()).update(m for m in MEASURES if m in row)
            keyed.append({**row, "group": group})
        summary = summarize(keyed, list(MEASURES), "group", report.bootstrap_samples, report.seed)
        return [
            {
                "method": r["group"][0],
                "kind": r["group"][1],
                "size": r["group"][2],
                "measure": r["metric"],
                **{k: r[k] for k in ("mean", "ci_low", "ci_high", "n")},
            }
            for r in summary
            if r["metric"] in measured[r["group"]]
        ]

    def write(self, report: EvaluationReport) -> None:
        """``robustness_per_image.csv``, ``robustness.csv`` and ``robustness.png`` (nothing when not run)."""
        if not self.rows:
            return
        self.summary = self._summarize(report)
        header = ["method", "kind", "size", "image", *MEASURES]
        report.write_csv(
            "robustness_per_image.csv",
            header,
            [[_cell(row.get(column, math.nan)) for column in header] for row in self.rows],
        )
        report.write_csv(
            "robustness.csv", SUMMARY_COLUMNS, [[_cell(row[c]) for c in SUMMARY_COLUMNS] for row in self.summary]
        )
        self.comparisons = self._compare(report)
        report.write_csv(
            "robustness_paired.csv",
            PAIRED_COLUMNS,
            [[_cell(c[k]) for k in PAIRED_COLUMNS] for c in self.comparisons],
        )
        write_robustness_curves(
            report.output_dir / "robustness.png",
            self.summary,
            PERTURBATIONS,
            {
                name: f"{m.title} ({'higher' if m.higher_is_better else 'lower'} is better)"
                for name, m in MEASURES.items()
            },
            reference_kind=CLEAN,
            harder_when_smaller=("gaussian",),
            overwrite=report.overwrite,
        )

    def _compare(self, report: EvaluationReport) -> list[dict]:
        """The reference minus every other method, per perturbation, size and measure (paired over images)."""
        methods = list(dict.fromkeys(row["method"] for row in self.rows))
        reference = reference_method(self.requested_reference, methods)
        if reference not in methods or len(methods) < 2:
            return []
        comparisons = []
        for kind, size in dict.fromkeys((row["kind"], row["size"]) for row in self.rows):
            rows = [{**row, "stem": row["image"]} for row in self.rows if (row["kind"], row["size"]) == (kind, size)]
            measured = {name: m for name, m in MEASURES.items() if any(name in row for row in rows)}
            for comparison in paired_comparisons(rows, measured, reference, report.bootstrap_samples, report.seed):
                comparison = {**comparison, "kind": kind, "size": size, "measure": comparison["metric"]}
                comparisons.append(comparison)
        return comparisons

    def _paired_markdown(self, columns: list[tuple[str, float]]) -> list[str]:
        """The reference minus each method on every perturbation's headline measure (paired CIs, verdicts)."""
        if not self.comparisons:
            return []
        reference = self.comparisons[0]["reference"]
        cells = {(c["method"], c["kind"], c["size"], c["measure"]): c for c in self.comparisons}
        marks = {REFERENCE_BETTER: " (more robust)", REFERENCE_WORSE: " (less robust)"}
        lines = [
            f"Paired: per image, {reference}'s value minus the other method's (mean [95% bootstrap CI of the pairs]; "
            f"'more robust' / 'less robust' where the interval excludes 0; robustness_paired.csv has every measure):",
            "",
            "| method | "
            + " | ".join(f"{_heading(HEADLINE[kind])} {UNITS[kind].format(size)}" for kind, size in columns)
            + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for method in dict.fromkeys(c["method"] for c in self.comparisons):
            row = [method]
            for kind, size in columns:
                cell = cells.get((method, kind, size, HEADLINE[kind]))
                if cell is None:
                    row.append("-")
                    continue
                row.append(difference_interval(cell) + marks.get(cell["verdict"], ""))
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def _cells(self) -> dict[tuple, dict]:
        return {(r["method"], r["kind"], r["size"], r["measure"]): r for r in self.summary}

    def _columns(self) -> list[tuple[str, float]]:
        sizes = {"uniform": self.radii, "gaussian": self.snr_db, "shift": [float(s) for s in self.shifts]}
        return [(kind, size) for kind in PERTURBATIONS for size in sizes[kind]]

    def markdown(self, report: EvaluationReport) -> list[str]:
        if self.count <= 0:
            return []
        lines = ["## Robustness to input perturbations", ""]
        if self.failure:
            return [*lines, f"The test failed: {self.failure}"]
        if not self.rows:
            return [*lines, "Not run (no image was explained)."]
        if not self.summary:
            self.summary = self._summarize(report)
        cells, columns = self._cells(), self._columns()
        methods = list(dict.fromkeys(row["method"] for row in self.rows))
        hardest = {
            kind: (min if kind == "gaussian" else max)(s for k, s in columns if k == kind) for kind, _ in columns
        }
        lines += [
            f"Every method's map on the first {len(self.stems)} image(s), images in [0, 1]; mean [95% bootstrap CI] "
            "over images (robustness.csv, per image: robustness_per_image.csv; robustness.png). "
            f"**Max-sensitivity** (Yeh et al. 2019): the largest ||map(x + d) - map(x)|| / ||map(x)|| (Frobenius) over "
            f"{self.samples} draw(s) of d ~ U[-r, r] per pixel, lower is more stable. **Gaussian noise** at an SNR "
            "(sigma = std(x) / 10^(SNR/20)) and **shift** by s pixels along every axis (zero fill, the map shifted "
            "back, the pixels inside both frames): Spearman correlation with the clean map, higher is more stable.",
            "",
            "| method | "
            + " | ".join(
                f"{_heading(HEADLINE[kind])} {UNITS[kind].format(size)} "
                f"{'↑' if MEASURES[HEADLINE[kind]].higher_is_better else '↓'}"
                for kind, size in columns
            )
            + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for method in methods:
            row = [method]
            for kind, size in columns:
                cell = cells.get((method, kind, size, HEADLINE[kind]))
                row.append(summary_interval(cell))
            lines.append("| " + " | ".join(row) + " |")
        for kind in dict.fromkeys(kind for kind, _ in columns):
            lines += ["", self._sentence(kind, hardest[kind], methods, cells)]
        paired = self._paired_markdown(columns)
        lines += ["", *paired] if paired else []
        localized = [(CLEAN, 0.0), *((kind, hardest[kind]) for kind in ("gaussian", "shift") if kind in hardest)]
        lines += [
            "",
            "Localization against the mask (means; the shifted mask for shifts) of the clean maps and at the "
            "strongest noise and shift:",
            "",
            "| method | "
            + " | ".join(
                f"{_heading(m)} {'clean' if kind == CLEAN else UNITS[kind].format(size)}"
                for m in ("pointing_game", "relevance_mass", "top_k_iou")
                for kind, size in localized
            )
            + " |",
            "|---" * (3 * len(localized) + 1) + "|",
        ]
        for method in methods:
            values = []
            for measure in ("pointing_game", "relevance_mass", "top_k_iou"):
                for kind, size in localized:
                    cell = cells.get((method, kind, size, measure))
                    values.append("-" if cell is None or not cell["n"] else f"{cell['mean']:.3f}")
            lines.append(f"| {method} | " + " | ".join(values) + " |")
        return lines

    @staticmethod
    def _sentence(kind: str, size: float, methods: list[str], cells: dict) -> str:
        measure = MEASURES[HEADLINE[kind]]
        scored = [(m, cells[(m, kind, size, measure.name)]) for m in methods if (m, kind, size, measure.name) in cells]
        scored = [(m, c) for m, c in scored if c["n"]]
        label = {"uniform": "Uniform noise", "gaussian": "Gaussian noise", "shift": "Shifts"}[kind]
        if not scored:
            return f"{label}: no finite value."
        ranked = sorted(scored, key=lambda item: item[1]["mean"], reverse=measure.higher_is_better)
        (best, top), (worst, bottom) = ranked[0], ranked[-1]
        return (
            f"{label} at {UNITS[kind].format(size)}: the most stable map by {measure.title} is {best} "
            f"({summary_interval(top)}), the least {worst} ({summary_interval(bottom)})."
        )

    def tracked_metrics(self, report: EvaluationReport) -> dict[str, float]:
        """``<method>_robustness_<kind>_<size>_<measure>``: every mean of :attr:`summary` (finite ones)."""
        return {
            f"{r['method']}_robustness_{r['kind']}_{r['size']:g}_{r['measure']}": r["mean"]
            for r in self.summary
            if r["n"]
        }


def _heading(measure: str) -> str:
    """A measure's title for a markdown table cell (a ``|`` would split the cell)."""
    return MEASURES[measure].title.replace("|", "\\|")
