"""Ignite handlers that score explanations against ground-truth masks and write the evaluation report.

In ``evaluate.json`` they follow the :class:`~medxgan_monai.handlers.ExplanationHandler` on a MONAI evaluator:
:class:`ExplanationScorer` scores every explained batch (2D images itself; the slices of volumes through its
:class:`VolumeScorer`, which scores each volume in 3D and per slice once its last slice is explained),
:class:`RandomizationTest` runs the sanity test on the first images at the end, and :class:`EvaluationReport` writes
the CSVs, the markdown summary and the charts, and hands the summary to the MLflow handler through
``engine.state.metrics``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.utils import CommonKeys
from torch import nn

from medxgan_monai.explain.registry import Explainers
from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.handlers.explanation import (
    ATTRIBUTIONS,
    EXPLAINED,
    FAILURE,
    SECONDS,
    ExplanationWriter,
    InferenceReport,
    VolumeKeys,
    explained_output,
    volume_row,
)
from medxgan_monai.io.atomic import atomic_write_csv, atomic_write_text
from medxgan_monai.io.charts import ExampleCase, write_example_cases, write_metric_bars, write_randomization_curves
from medxgan_monai.io.explanation_outputs import ExplainedImage, NiftiMapWriter, stack_slices
from medxgan_monai.io.ledger import OutputLedger
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

__all__ = ["METRICS", "EvaluationReport", "ExplanationScorer", "RandomizationTest", "VolumeScorer", "volume_metrics"]

logger = logging.getLogger(__name__)


IDENTITY_COLUMNS = ("stem", "source", "label", "probability", "method", "seconds")
#: per-image values an explainer reports about its own maps (``Attribution.details``), written beside the metrics:
#: ``completeness_gap`` is |sum of the attributions - (p(x) - p(baseline))| of the Integrated-Gradients-type maps
#: (``ig``, ``medxgan_ig``, ``medxgan_lig``), in probability units; NaN for the other methods
DETAIL_COLUMNS = ("completeness_gap",)
#: the columns of every summary CSV (one row per method and metric)
SUMMARY_COLUMNS = ("method", "metric", "mean", "ci_low", "ci_high", "n")


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
    batches carry ``mask``, ``stem`` and ``source``. The slices of a volume (items with ``"slice" >= 0``, see
    :mod:`medxgan_monai.data.volumes`) are not images of this table: they go to ``volumes``, which scores each
    volume as a whole (:class:`VolumeScorer`); without one, each volume is reported as a problem, never dropped
    silently.

    Args:
        classifier: the explained classifier (for deletion and insertion).
        report: collects predictions and per-image problems (``predictions.csv``, ``errors.csv``).
        target: the explained class.
        perturbation_steps: steps of the deletion and insertion curves.
        ranking_metric: the metric that picks the best and worst examples.
        examples: how many best and how many worst images to keep per method.
        metrics: the metric table (name -> :class:`~medxgan_monai.metrics.ExplanationMetric`); the report's columns.
        volumes: scores the volumes (a section of the report, which adds it itself).
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
        volumes: VolumeScorer | None = None,
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
        self.volumes = volumes
        self.rows: list[dict] = []
        self.candidates: dict[str, list[_Candidate]] = {}
        self._unscored_volumes: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if self.volumes is not None:
            # the volumes' ledger locks the output folder when it writes the first volume; the run ends the lock
            engine.add_event_handler(Events.COMPLETED, lambda _: self.volumes.ledger.release())

    def __call__(self, engine: Engine) -> None:
        batch, output = engine.state.batch, explained_output(engine, type(self).__name__)
        stems, sources = list(batch["stem"]), [str(s) for s in batch["source"]]
        numbers = VolumeKeys.of(batch, len(stems)).slice
        images = [index for index, number in enumerate(numbers) if number < 0]
        if len(images) < len(stems):
            self._add_volume_slices(batch, output, [index for index, number in enumerate(numbers) if number >= 0])
        if not images:
            return
        stems, sources = [stems[i] for i in images], [sources[i] for i in images]
        if FAILURE in output:
            for stem, source in zip(stems, sources, strict=True):
                self.report.add_problem(stem, source, output[FAILURE])
            return
        try:
            rows = self._score(batch, output, images, stems, sources)
        except Exception as error:  # one batch's failure must not stop the evaluation
            logger.exception("scoring failed for iteration %d", engine.state.iteration)
            for stem, source in zip(stems, sources, strict=True):
                self.report.add_problem(stem, source, f"scoring failed: {type(error).__name__}: {error}")
            return
        self.rows.extend(rows)
        for index, stem, source in zip(images, stems, sources, strict=True):
            self.report.add_prediction(stem, source, output, index)

    def _add_volume_slices(self, batch: Mapping, output: Mapping, indices: list[int]) -> None:
        """Hand the batch's slices of volumes to :attr:`volumes`; without it, report each volume once."""
        if self.volumes is None:
            for index in indices:
                stem = str(batch["stem"][index])
                if stem not in self._unscored_volumes:
                    self._unscored_volumes.add(stem)
                    problem = "a volume, and this evaluation scores no volumes (its ExplanationScorer has no volumes)"
                    self.report.add_problem(stem, str(batch["source"][index]), problem)
            return
        probabilities = class_probabilities(output[CommonKeys.PRED]).detach().cpu()[:, self.target]
        self.volumes.add(batch, output, indices, probabilities)

    def _score(
        self, batch: Mapping, output: Mapping, indices: list[int], stems: list[str], sources: list[str]
    ) -> list[dict]:
        """The rows of the batch's 2D images ``indices``."""
        whole = len(indices) == len(batch["stem"])
        chosen = torch.as_tensor(indices, dtype=torch.long)

        def rows_of(values: torch.Tensor) -> torch.Tensor:
            # a batch of 2D images only is scored as it is; one with slices of volumes, on its 2D images
            return values if whole else values[chosen.to(values.device)]

        images = rows_of(torch.as_tensor(output[self.image_key]))
        masks = rows_of((torch.as_tensor(batch[self.mask_key]).detach().cpu().float() > 0.5).float())
        labels = rows_of(torch.as_tensor(output[CommonKeys.LABEL]).detach().cpu().view(-1))
        probabilities = rows_of(class_probabilities(output[CommonKeys.PRED]).detach().cpu()[:, self.target])
        rows = []
        for method, attribution in output[ATTRIBUTIONS].items():
            maps = rows_of(attribution.maps.detach())
            counterfactual = attribution.counterfactual_probability
            counterfactual = None if counterfactual is None else rows_of(counterfactual)
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
                name: rows_of(attribution.details[name].detach().cpu().view(-1))
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
            image, mask, saliency = (a[index, 0].detach().cpu().numpy() for a in (images, masks, maps))
            caption = f"{row['stem']}\n{self.metrics[self.ranking_metric].title} {score:.2f}"
            if image.ndim == 3:  # a volume explained whole: its slice with the most lesion (last axis)
                shown = int(np.argmax(mask.sum(axis=(0, 1))))
                image, mask, saliency = image[..., shown], mask[..., shown], saliency[..., shown]
                caption = f"{row['stem']} slice {shown}\n{self.metrics[self.ranking_metric].title} {score:.2f}"
            # MONAI arrays are (x, y): transpose so tiles show rows as a viewer would
            case = ExampleCase(caption, image.T, mask.T > 0.5, saliency.T)
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


def volume_metrics(metrics: Mapping[str, ExplanationMetric] = METRICS) -> dict[str, ExplanationMetric]:
    """The metrics of a table that score a volume: those that need no classifier (deletion, insertion and ROAD
    perturb the 2D classifier's input picture, which a volume is not).

    Example::

        list(volume_metrics())   # ['pointing_game', 'relevance_mass', 'top_k_iou', ..., 'entropy']
    """
    return {name: metric for name, metric in metrics.items() if "classifier" not in metric.needs}


#: the identity columns of ``metrics_per_volume.csv`` and ``metrics_per_slice.csv``, before the metrics
VOLUME_COLUMNS = (
    "stem",
    "source",
    "label",
    "probability",
    "method",
    "seconds",
    "slices",
    "explained_slices",
    "lesion_slices",
    "top_slice",
    "peak_slices",
)
SLICE_COLUMNS = ("stem", "source", "slice", "label", "probability", "method", "explained")


@dataclass
class _KeptSlice:
    """One slice of a volume, kept until the volume's last slice is explained."""

    image: ExplainedImage  # in both grids, its maps in the source grid
    row: dict  # its predictions.csv row
    explained: bool
    counterfactual_probability: dict[str, float]  # per method; NaN without a counterfactual or not explained


class VolumeScorer:
    """Score every volume (a 3D NIfTI, a DICOM series) explained slice by slice against its 3D mask, in the volume's
    own grid, as a whole and per slice; a section of the :class:`EvaluationReport`.

    The :class:`ExplanationScorer` hands it the slices of each batch. A slice is loaded again with ``preprocessing``
    (the evaluation's batches drop the metadata that the way back needs), its maps are brought back to the source
    grid as the inference bundle brings them (:meth:`~medxgan_monai.handlers.ExplanationWriter.explained_image`),
    and when a volume's last slice comes, :func:`~medxgan_monai.io.explanation_outputs.stack_slices` assembles the
    volume, its maps are written (``<stem>_<method>.nii.gz``, through ``ledger``: into the evaluation's output
    folder, as inference writes them) and scored on exactly those arrays against the volume's ``mask``, a 3D NIfTI
    in the volume's grid (:func:`~medxgan_monai.data.collect_evaluation_items` checks it; voxels above 0.5).

    Per volume and method (``metrics_per_volume.csv``): each metric of :func:`volume_metrics` over all voxels at once:
    the 3D pointing game (the map's maximum over the whole volume lies in the mask; ties count as a hit only if
    every tied voxel is inside), relevance mass (the share of the map's total inside the mask), top-|GT| IoU (the
    |mask| highest voxels), pixel AUROC, Otsu IoU, sparseness, entropy; counterfactual validity is that of the most
    positive slice's counterfactual (the volume's probability is that slice's, the maximum over its slices); seconds
    are the sum over its slices. Per slice with mask voxels (``metrics_per_slice.csv``): the same metrics on that
    slice of the written map and of the mask, with the slice's own counterfactual. Summaries with the report's
    bootstrap CIs: ``metrics_summary_volumes.csv`` and ``metrics_summary_slices.csv``; ``summary.md``: a "Volumes"
    part (one table per metric group, then the slices'); MLflow: ``<method>_volume_<metric>`` and
    ``<method>_slice_<metric>``. ``predictions.csv`` gets each volume's row, then its slices' rows, as inference
    writes them.

    How to read the scores:

    * Each slice's map is explained and normalized on its own (the 2D convention, :func:`~medxgan_monai.explain.
      normalize_saliency`), then brought back to one scale across the volume with the slices' raw peaks
      (:func:`~medxgan_monai.io.explanation_outputs.stack_slices`): the volume's maximum lies on the slice with the
      strongest raw evidence, and a weak slice stays weak. ``peak_slices`` counts the slices holding the maximum
      (above 1 only for exactly equal raw peaks: then the pointing game is 0 unless every one of them is inside the
      mask).
    * Slices not explained (the :class:`~medxgan_monai.handlers.ExplanationHandler`'s ``slices``: ``evaluate.json``
      explains all, so that the scores measure the maps and not the classifier's choice of slices) have zero maps:
      in the volume's scores they hold no mass and never the maximum (an all-zero map scores 0); in the per-slice
      table they are NaN (``explained`` 0: there is no map to score).
    * The slices of a volume are not independent: the per-slice intervals are narrower than the data justify;
      compare methods on the volumes.
    * 2D-only parts of the evaluation: deletion, insertion and ROAD are not scored for volumes, the paired
      comparisons are over the 2D images only, and the :class:`RandomizationTest` leaves slices out (:meth:`write`
      logs this when volumes were scored). The robustness section is 2D-only as well: its rows name images by stem,
      which a volume's slices share, so it must be given 2D images only.

    Args:
        items: the evaluated items (``screen_inputs``' good ones: each slice with its file, mask and label), found by
            stem and slice.
        preprocessing: the transform that made the model's image of an item, with metadata (``evaluate.json``:
            ``image_preprocessing``).
        ledger: writes each volume's maps atomically into its output folder.
        report: takes each volume's predictions (a volume row, then its slice rows) and problems.
        metrics: the metric table (:func:`volume_metrics` of it are scored).

    Example (config)::

        "volume_scorer": {"_target_": "medxgan_monai.handlers.evaluation.VolumeScorer", "items": "$@screened[0]",
                          "preprocessing": "@image_preprocessing", "ledger": "@ledger", "report": "@report"}
    """

    def __init__(
        self,
        items: Sequence[Mapping],
        preprocessing,
        ledger: OutputLedger,
        report: InferenceReport,
        metrics: Mapping[str, ExplanationMetric] = METRICS,
        mask_key: str = "mask",
        image_key: str = CommonKeys.IMAGE,
    ) -> None:
        self.items = {(str(i["stem"]), int(i["slice"])): i for i in items if int(i.get("slice", -1)) >= 0}
        self.preprocessing = preprocessing
        self.ledger, self.report = ledger, report
        self.metrics = volume_metrics(metrics)
        self.mask_key, self.image_key = mask_key, image_key
        self.writers = [NiftiMapWriter()]
        # used for its explained_image only: a slice's maps back to the source grid exactly as inference does
        self._source_grid = ExplanationWriter(
            ledger.output_dir, preprocessing, report, writers=[], ledger=ledger, image_key=image_key
        )
        self.rows: list[dict] = []
        self.slice_rows: list[dict] = []
        self.summary: list[dict] = []
        self.slice_summary: list[dict] = []
        self._kept: dict[str, dict[int, _KeptSlice]] = {}
        self._failed: set[str] = set()

    def add(self, batch: Mapping, output: Mapping, indices: Sequence[int], probabilities: torch.Tensor) -> None:
        """Keep the slices ``indices`` of an explained batch (``probabilities``: the explained class's, per image of
        the batch); score each volume whose last slice this is. A volume with a slice that failed is one problem."""
        keys = VolumeKeys.of(batch, len(batch["stem"]))
        explained = output.get(EXPLAINED)
        for index in indices:
            stem, number, source = str(batch["stem"][index]), keys.slice[index], keys.source[index]
            if stem in self._failed:
                continue
            if FAILURE in output:
                self._fail(stem, source, f"slice {number}: {output[FAILURE]}")
                continue
            try:
                is_explained = explained is None or bool(explained[index])
                kept = self._slice(stem, number, output, index, float(probabilities[index]), is_explained)
            except Exception as error:  # one volume's failure must not stop the evaluation
                logger.exception("volume %s: slice %d could not be kept", stem, number)
                self._fail(stem, source, f"slice {number}: {type(error).__name__}: {error}")
                continue
            slices = self._kept.setdefault(stem, {})
            slices[number] = kept
            if len(slices) < keys.count[index]:
                continue
            try:
                self._finish(stem, source, keys.axis[index])
            except Exception as error:  # one volume's failure must not stop the evaluation
                logger.exception("volume %s could not be scored", stem)
                self._fail(stem, source, f"scoring the volume failed: {type(error).__name__}: {error}")

    def _slice(
        self, stem: str, number: int, output: Mapping, index: int, probability: float, explained: bool
    ) -> _KeptSlice:
        image = self.preprocessing(dict(self.items[(stem, number)]))[self.image_key]
        attributions = output[ATTRIBUTIONS]
        in_both_grids = self._source_grid.explained_image(stem, image, attributions, index, probability)
        row = InferenceReport.slice_row(stem, in_both_grids.source, output, index, number, explained)
        counterfactual = {
            method: math.nan if a.counterfactual_probability is None else float(a.counterfactual_probability[index])
            for method, a in attributions.items()
        }
        return _KeptSlice(in_both_grids, row, explained, counterfactual)

    def _finish(self, stem: str, source: str, axis: int) -> None:
        """Assemble the volume ``stem``, score it, write its maps and its predictions."""
        kept = self._kept.pop(stem)
        ordered = [kept[number] for number in sorted(kept)]
        volume = stack_slices(stem, source, [s.image for s in ordered], axis, [s.explained for s in ordered])
        item = self.items[(stem, min(kept))]
        rows, slice_rows = self._score(volume, ordered, _volume_mask(item[self.mask_key]), int(item["label"]))
        folder = self.ledger.staging(stem)
        for writer in self.writers:
            writer(volume, folder)
        prediction = volume_row(volume, [piece.row for piece in ordered])
        self.ledger.commit(stem, prediction)
        self.report.predictions.append(prediction)
        self.rows += rows
        self.slice_rows += slice_rows

    def _score(
        self, volume: ExplainedImage, ordered: list[_KeptSlice], mask: np.ndarray, label: int
    ) -> tuple[list[dict], list[dict]]:
        axis, top = volume.volume.slice_axis, volume.volume.top_slice
        in_plane = tuple(a for a in range(mask.ndim) if a != axis)
        lesion = [k for k in range(mask.shape[axis]) if np.take(mask, k, axis=axis).any()]
        rows, slice_rows = [], []
        for method, result in volume.methods.items():
            # the array NiftiMapWriter writes
            array = result.saliency_in_source_grid.reshape(volume.shape or result.saliency_in_source_grid.shape)
            if array.shape != mask.shape:
                raise ValueError(f"the mask's shape {mask.shape} is not the volume's {array.shape}")
            counterfactual = [s.counterfactual_probability[method] for s in ordered]
            scores = self._scores(array[None], mask[None], [volume.probability], [counterfactual[top]], [volume.stem])
            row = {
                "stem": volume.stem,
                "source": volume.source,
                "label": label,
                "probability": volume.probability,
                "method": method,
                "seconds": sum(float(s.row[SECONDS].get(method, 0.0)) for s in ordered),
                "slices": len(ordered),
                "explained_slices": sum(s.explained for s in ordered),
                "lesion_slices": len(lesion),
                "top_slice": top,
                "peak_slices": int((array == array.max()).any(axis=in_plane).sum()),
            }
            rows.append(row | {name: float(values[0]) for name, values in scores.items()})
            if not lesion:
                continue
            planes = np.stack([np.take(array, k, axis=axis) for k in lesion])
            truth = np.stack([np.take(mask, k, axis=axis) for k in lesion])
            probabilities = [ordered[k].image.probability for k in lesion]
            names = [f"{volume.stem}_slice{k}" for k in lesion]
            scores = self._scores(planes, truth, probabilities, [counterfactual[k] for k in lesion], names)
            for position, k in enumerate(lesion):
                piece = ordered[k]
                row = {
                    "stem": volume.stem,
                    "source": piece.image.source,
                    "slice": k,
                    "label": label,
                    "probability": piece.image.probability,
                    "method": method,
                    "explained": int(piece.explained),
                }
                # a slice not explained has no map to score
                values = {name: float(v[position]) if piece.explained else math.nan for name, v in scores.items()}
                slice_rows.append(row | values)
        return rows, slice_rows

    def _scores(self, maps, masks, probabilities, counterfactual, names) -> dict[str, torch.Tensor]:
        """:func:`score_maps` of ``maps`` (B, *spatial) against ``masks``, with the volume metrics."""
        counterfactual = torch.tensor(counterfactual, dtype=torch.float32)
        return score_maps(
            torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1),
            masks=torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).unsqueeze(1),
            probabilities=torch.tensor(probabilities, dtype=torch.float32),
            # a method without a counterfactual, or a slice not explained: no validity, not "not flipped"
            counterfactual_probability=None if bool(torch.isnan(counterfactual).all()) else counterfactual,
            metrics=self.metrics,
            names=names,
        )

    def _fail(self, stem: str, source: str, problem: str) -> None:
        self._kept.pop(stem, None)
        self._failed.add(stem)
        self.ledger.discard([stem])
        self.report.add_problem(stem, source, problem)

    # the report section

    def write(self, report: EvaluationReport) -> None:
        """``metrics_per_volume.csv``, ``metrics_per_slice.csv`` and their summaries with bootstrap CIs
        (``metrics_summary_volumes.csv``, ``metrics_summary_slices.csv``); nothing when no volume was scored."""
        for stem, kept in list(self._kept.items()):  # a volume whose other slices never came: reported, not lost
            self._fail(stem, str(self.items[(stem, min(kept))]["source"]), f"only {len(kept)} slice(s) were explained")
        if not self.rows:
            return
        self.summary = summarize(self.rows, [*self.metrics, "seconds"], "method", report.bootstrap_samples, report.seed)
        self.slice_summary = summarize(
            self.slice_rows, list(self.metrics), "method", report.bootstrap_samples, report.seed
        )
        for name, identity, rows in (
            ("metrics_per_volume.csv", VOLUME_COLUMNS, self.rows),
            ("metrics_per_slice.csv", SLICE_COLUMNS, self.slice_rows),
        ):
            columns = [*identity, *self.metrics]
            report.write_csv(name, columns, [[_cell(row[c]) for c in columns] for row in rows])
        for name, summary in (
            ("metrics_summary_volumes.csv", self.summary),
            ("metrics_summary_slices.csv", self.slice_summary),
        ):
            report.write_csv(name, SUMMARY_COLUMNS, [[_cell(row[c]) for c in SUMMARY_COLUMNS] for row in summary])
        logger.info(
            "%d volume(s) scored in 3D and per slice (metrics_per_volume.csv, metrics_per_slice.csv); deletion, "
            "insertion, ROAD and the paired comparisons are 2D-only and leave them out, and the randomization test "
            "leaves their slices out",
            len({row["stem"] for row in self.rows}),
        )

    def markdown(self, report: EvaluationReport) -> list[str]:
        if not self.rows:
            return []
        volumes = len({row["stem"] for row in self.rows})
        slices = len({(row["stem"], row["slice"]) for row in self.slice_rows if row["explained"]})
        return [
            "## Volumes, scored in each volume's own grid",
            "",
            f"{volumes} volume(s), explained slice by slice and scored against their 3D masks on the maps as written "
            "(`<stem>_<method>.nii.gz`): the pointing game asks whether the map's maximum over the whole volume lies "
            "in the mask, relevance mass and top-\\|GT\\| IoU are over all its voxels, counterfactual validity is "
            "that of the most positive slice's counterfactual (metrics_per_volume.csv, "
            "metrics_summary_volumes.csv). The slices' maps are on one scale across the volume (each slice's raw "
            "peak); slices not explained count as zero maps. Deletion, insertion and ROAD perturb "
            "the 2D classifier's input and are not scored for volumes.",
            "",
            *_summary_tables(self.summary, self.metrics, unit="volume"),
            "",
            "### Per slice with mask voxels",
            "",
            f"{slices} explained slice(s) with mask voxels, each slice of the written map against that slice of the "
            "mask (metrics_per_slice.csv, metrics_summary_slices.csv; slices not explained are left out). The slices "
            "of a volume are not independent, so these intervals are narrower than the data justify: compare "
            "methods on the volumes.",
            "",
            *_summary_tables(self.slice_summary, self.metrics, level="####", seconds=False, unit="slice"),
        ]

    def tracked_metrics(self, report: EvaluationReport) -> dict[str, float]:
        """``<method>_volume_<metric>`` and ``<method>_slice_<metric>``: means and CI bounds."""
        return {**_tracked(self.summary, "volume_"), **_tracked(self.slice_summary, "slice_")}


def _volume_mask(path: str) -> np.ndarray:
    """A volume's 3D mask in its own grid, as booleans (voxels above 0.5, as the 2D masks are binarized)."""
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32)) > 0.5


class RandomizationTest:
    """The cascading model-parameter randomization test (:func:`~medxgan_monai.metrics.cascading_randomization`)
    of every method, on the first ``images`` images the evaluator explains, run when the evaluation ends.

    After the run, :attr:`layers` holds the re-initialized layers in cascade order and :attr:`correlations` the
    per-method (L, B) Spearman correlations; if the test itself fails, :attr:`failure` says why (the evaluation's
    other results are kept). The slices of volumes are left out (logged once): the first images of a volume explained
    slice by slice are often its empty border slices, on which a map's rank correlation means nothing.

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
        self._slices_left_out = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        if FAILURE in output or len(self.images) >= self.count:
            return
        batch = torch.as_tensor(output[self.image_key]).detach()
        numbers = VolumeKeys.of(engine.state.batch, len(batch)).slice
        images = [image for image, number in zip(batch, numbers, strict=True) if number < 0]
        if len(images) < len(batch) and not self._slices_left_out:
            self._slices_left_out = True
            logger.info("randomization test: the slices of volumes are left out; it runs on the 2D images")
        self.images.extend(images[: self.count - len(self.images)])

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


def _summary_table(
    summary: list[dict], metrics: Mapping[str, ExplanationMetric], seconds: bool = True, unit: str = "image"
) -> list[str]:
    """Markdown lines of a :func:`summarize` result: one row per method, best mean per column in bold, and the
    seconds per ``unit`` (what a row of the scores is: an image, a volume) as the last column if ``seconds``."""
    methods = list(dict.fromkeys(row["method"] for row in summary))
    cells = {(row["method"], row["metric"]): row for row in summary}
    header = [m.markdown_heading for m in metrics.values()] + ([f"s / {unit}"] if seconds else [])
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


def _summary_tables(
    summary: list[dict],
    metrics: Mapping[str, ExplanationMetric],
    level: str = "###",
    seconds: bool = True,
    unit: str = "image",
) -> list[str]:
    """One :func:`_summary_table` per metric group, each under a ``level`` heading naming the group and the range of
    images (or other ``unit``) its means are over (n: the costly metrics score a subset, some apply to some methods
    or images only); with ``seconds``, seconds per image in the first table only (the summary must then have them)."""
    lines: list[str] = []
    for position, (group, members) in enumerate(_metric_groups(metrics).items()):
        counts = [row["n"] for row in summary if row["metric"] in members and row["n"]]
        span = (
            "" if not counts else f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"
        )
        scored = f" (n = {span} {unit}s per method and metric)" if span else ""
        lines += [
            *([""] if position else []),
            f"{level} {group.capitalize()}{scored}",
            "",
            *_summary_table(summary, members, seconds=seconds and position == 0, unit=unit),
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
    after the metric tables: the scorer's :class:`VolumeScorer` first (it adds nothing when no volume was scored),
    then ``randomization``, then ``sections``.

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
        volumes = getattr(scorer, "volumes", None)
        self.sections = [
            *([volumes] if volumes is not None else []),
            *([randomization] if randomization is not None else []),
            *sections,
        ]
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
        for name, summary in (
            ("metrics_summary.csv", self.summary),
            ("metrics_summary_detected.csv", self.detected_summary),
        ):
            self.write_csv(name, SUMMARY_COLUMNS, [[_cell(r[c]) for c in SUMMARY_COLUMNS] for r in summary])
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
        tracked = _tracked(self.summary)
        for section in self.sections:
            tracked.update(section.tracked_metrics(self))
        return tracked

    def markdown(self) -> str:
        """The summary as markdown: one metrics table per metric group (best mean per column in bold), over all
        scored images, then over those the classifier detects; then each section's part."""
        images = len({row["stem"] for row in self.scorer.rows})
        volumes = getattr(self.scorer, "volumes", None)
        volumes = len({row["stem"] for row in volumes.rows}) if volumes is not None else 0
        lines = [
            "# Explanation evaluation",
            "",
            f"{images} image(s){f' and {volumes} volume(s)' if volumes else ''} scored"
            f"{' from ' + self.description if self.description else ''}; "
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


def _tracked(summary: list[dict], prefix: str = "") -> dict[str, float]:
    """``<method>_<prefix><metric>`` means and CI bounds of a :func:`summarize` result (metrics with a value only)."""
    tracked = {}
    for row in summary:
        if row["n"]:
            name = f"{row['method']}_{prefix}{row['metric']}"
            tracked.update({name: row["mean"], f"{name}_ci_low": row["ci_low"], f"{name}_ci_high": row["ci_high"]})
    return tracked


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
