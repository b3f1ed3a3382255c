"""Ignite handlers that explain each evaluated batch and write the results next to the source scans."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd
from monai.utils import CommonKeys

from medxgan_monai.data.inputs import InputProblem, output_stem
from medxgan_monai.explain.base import Attribution
from medxgan_monai.explain.registry import METHODS, Explainers, counterfactual_names, counterfactuals_by_name
from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.io.atomic import atomic_write_csv
from medxgan_monai.io.explanation_outputs import (
    ExplainedCounterfactual,
    ExplainedImage,
    ExplainedMethod,
    default_writers,
    native_volume,
    stack_slices,
)
from medxgan_monai.io.ledger import OutputLedger
from medxgan_monai.io.nifti import SLICE_SOURCES, SOURCE_FORMAT, output_geometry
from medxgan_monai.networks.classifier import class_probabilities

__all__ = ["ATTRIBUTIONS", "FAILURE", "SECONDS", "ExplanationHandler", "ExplanationWriter", "InferenceFailed"]
__all__ += ["InferenceReport", "VolumeKeys", "explained_output", "parse_slice_range", "volume_row"]

logger = logging.getLogger(__name__)

#: keys the :class:`ExplanationHandler` adds to ``engine.state.output``
ATTRIBUTIONS = "attributions"
SECONDS = "seconds"
FAILURE = "explanation_failure"
EXPLAINED = "explained"
#: the predictions.csv columns of counterfactual probabilities, one per counterfactual the methods can produce
COUNTERFACTUAL_COLUMNS = [f"{name}_probability" for name in counterfactual_names()]


def explained_output(engine: Engine, consumer: str) -> dict:
    """``engine.state.output`` after the :class:`ExplanationHandler` ran on it (it holds the attributions or the
    reason explaining failed); a handler that reads the explanations calls this, so a handlers list that puts it
    before the :class:`ExplanationHandler` fails at once, saying so, instead of writing empty results."""
    output = engine.state.output
    if ATTRIBUTIONS not in output and FAILURE not in output:
        raise RuntimeError(f"{consumer} needs the ExplanationHandler's results: list it after the ExplanationHandler")
    return output


class InferenceFailed(RuntimeError):
    """Raised at the end of a run in which some inputs could not be explained (the others were)."""


class InferenceReport:
    """Collects per-image predictions and per-input problems of one inference run; writes both CSV files.

    ``predictions.csv``: stem, source, slice, probability, predicted label, counterfactual probabilities (G(z_a, 0)
    and the refined residual counterfactual), seconds per method. A volume has one row with an empty slice (its
    probability is the maximum over its slices, its seconds the sum, its counterfactual probabilities those of its
    most positive slice), then one row per slice (source: the slice's file; a slice that was not explained has
    empty counterfactual probabilities and 0 seconds).
    ``errors.csv``: stem, source, problem of this run (written only when something failed; an ``errors.csv`` of an
    earlier run is removed when nothing failed, so it never describes items that are now complete).
    :meth:`raise_if_failed` ends the run with :class:`InferenceFailed` (a non-zero exit status) after everything that
    could be written was written. Neither file replaces one this tool did not write (see
    :meth:`~medxgan_monai.io.OutputLedger.claim_run_file`).

    Example::

        report = InferenceReport("out/", problems=screening_problems)
        ...
        report.write(); report.raise_if_failed()
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        problems: Sequence[InputProblem] = (),
        completed: Sequence[dict] = (),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.completed: list[dict] = list(completed)
        self.predictions: list[dict] = []
        self.problems: list[InputProblem] = list(problems)
        if self.completed:
            logger.info("%d input(s) already complete in %s: skipped", len(self.completed), self.output_dir)

    def add_problem(self, stem: str, path: str, problem: str) -> None:
        logger.error("%s (%s): %s", stem, path, problem)
        self.problems.append(InputProblem(stem, path, problem))

    @staticmethod
    def prediction_row(stem: str, path: str, output: Mapping, index: int) -> dict:
        """The predictions.csv row of image ``index`` of an explained batch ``output``."""
        probability = float(class_probabilities(output[CommonKeys.PRED])[index, 1])
        row = {"stem": stem, "source": path, "probability": f"{probability:.6f}"}
        row["predicted_label"] = int(probability >= 0.5)
        row.update(dict.fromkeys(COUNTERFACTUAL_COLUMNS, ""))
        for name, attribution in counterfactuals_by_name(output.get(ATTRIBUTIONS, {})).items():
            row[f"{name}_probability"] = f"{float(attribution.counterfactual_probability[index]):.6f}"
        row[SECONDS] = dict(output.get(SECONDS, {}))
        return row

    @classmethod
    def slice_row(cls, stem: str, path: str, output: Mapping, index: int, number: int, explained: bool) -> dict:
        """The predictions.csv row of slice ``number`` of a volume, image ``index`` of the batch ``output``: as
        :meth:`prediction_row`, with its slice number, and 0 seconds when it was not explained."""
        row = cls.prediction_row(stem, path, output, index)
        row["slice"] = number
        if not explained:
            row[SECONDS] = dict.fromkeys(row[SECONDS], 0.0)
        return row

    def add_prediction(self, stem: str, path: str, output: Mapping, index: int) -> None:
        """Record image ``index`` of an explained batch ``output`` (prediction, explanation, seconds)."""
        self.predictions.append(self.prediction_row(stem, path, output, index))

    def summary(self) -> dict[str, float]:
        """Counts and mean seconds per image of each method, e.g. for MLflow."""
        summary = {
            "explained": float(len(self.predictions)),
            "failed": float(len(self.problems)),
            "already_complete": float(len(self.completed)),
        }
        for method in _timed_methods(self.predictions):
            values = [row[SECONDS][method] for row in self.predictions if method in row.get(SECONDS, {})]
            summary[f"seconds_{method}"] = float(np.mean(values))
        return summary

    def write(self, engine: Engine | None = None) -> None:
        """Write the CSV files; with an engine, also put :meth:`summary` into its metrics (for a metrics logger
        that runs after this on the same event)."""
        if engine is not None:
            engine.state.metrics.update(self.summary())
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ledger = OutputLedger(self.output_dir)  # only the run files' ownership: the run's ledger holds the lock
        columns = ["stem", "source", "slice", "probability", "predicted_label", *COUNTERFACTUAL_COLUMNS]
        methods = _timed_methods(self.completed + self.predictions)
        # a volume's row (its probability: the maximum over its slices), then one row per slice
        listed = [entry for row in self.completed + self.predictions for entry in (row, *row.get(SLICE_ROWS, []))]
        rows = [
            # rows resumed from a run of an earlier version may lack the newer columns
            [row.get(c, "") for c in columns] + [f"{row[SECONDS].get(m, float('nan')):.4f}" for m in methods]
            for row in listed
        ]
        header = [*columns, *(f"seconds_{m}" for m in methods)]
        atomic_write_csv(ledger.claim_run_file("predictions.csv"), header, rows, lineterminator="\n")
        if self.problems:
            rows = [[p.stem, p.path, p.problem] for p in self.problems]
            errors = ledger.claim_run_file("errors.csv")
            atomic_write_csv(errors, ["stem", "source", "problem"], rows, lineterminator="\n")
        else:
            ledger.remove_run_file("errors.csv")
        logger.info(
            "explained %d image(s), %d failed, %d already complete; outputs in %s",
            len(self.predictions),
            len(self.problems),
            len(self.completed),
            self.output_dir,
        )

    def raise_if_failed(self) -> None:
        if self.problems:
            raise InferenceFailed(
                f"{len(self.problems)} input(s) could not be explained; see {self.output_dir / 'errors.csv'}"
            )


def _timed_methods(rows: Sequence[dict]) -> list[str]:
    """The methods with a time in any of the prediction ``rows``."""
    return sorted({key for row in rows for key in row.get(SECONDS, {})})


class ExplanationHandler:
    """Explain every batch an evaluator sees with the requested methods; put their results and timings in its output.

    After each iteration ``engine.state.output`` (a batch dict: use an evaluator with ``decollate=False``) gains
    ``"attributions"`` ({method: :class:`~medxgan_monai.explain.Attribution`}, in the methods' order) and
    ``"seconds"`` ({method: seconds per image, each as if it ran alone}); if explaining the batch fails, it gains
    ``"explanation_failure"`` (the reason) instead and the run continues.

    Slices of a volume (items with ``"slice" >= 0``, see :mod:`medxgan_monai.data.volumes`) are explained as
    ``slices`` says: ``"positive"`` (the default) the slices the classifier calls positive (probability >= 0.5),
    ``"all"`` every slice, ``"N-M"`` slices N to M (0-based, inclusive). The others are "not explained" (zero maps,
    the image as counterfactual, NaN probabilities: :meth:`~medxgan_monai.explain.Attribution.placed`), and
    ``"explained"`` (a bool per image) says which are which. A 2D image is always explained.

    Args:
        explainers: the requested methods' :class:`~medxgan_monai.explain.Explainers`.
        slices: which slices of a volume to explain.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.ExplanationHandler", "explainers": "@explainers", "slices": "positive"}
    """

    def __init__(self, explainers: Explainers, image_key: str = CommonKeys.IMAGE, slices: str = "positive") -> None:
        self.explainers = explainers
        self.image_key = image_key
        self.slices = slices
        self._range = parse_slice_range(slices)

    @property
    def methods(self) -> list[str]:
        return self.explainers.methods

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        images = output[self.image_key]
        try:
            chosen = self.chosen(engine.state.batch, output)
            output[EXPLAINED] = chosen
            if bool(chosen.all()):
                output[ATTRIBUTIONS], output[SECONDS] = self.explainers.explain(images)
                return
            rows = torch.nonzero(chosen.to(images.device)).flatten()
            plain = images.as_tensor() if isinstance(images, MetaTensor) else images
            if len(rows) == 0:
                has_counterfactual = {m: METHODS[m].counterfactual is not None for m in self.methods}
                output[ATTRIBUTIONS] = {m: Attribution.nothing(plain, has_counterfactual[m]) for m in self.methods}
                output[SECONDS] = dict.fromkeys(self.methods, 0.0)
                return
            attributions, output[SECONDS] = self.explainers.explain(images[rows])
            output[ATTRIBUTIONS] = {m: a.placed(rows, plain) for m, a in attributions.items()}
        except Exception as error:  # a failing batch is reported by the writer; the run goes on
            logger.exception("explanation failed for iteration %d", engine.state.iteration)
            output[FAILURE] = f"explanation failed: {type(error).__name__}: {error}"

    def chosen(self, batch: Mapping, output: Mapping) -> torch.Tensor:
        """Which images of the batch to explain (bool per image): 2D images always, slices as ``slices`` says."""
        size = output[self.image_key].shape[0]
        index = torch.as_tensor(VolumeKeys.of(batch, size).slice)
        is_slice = index >= 0
        if self.slices == "all" or not bool(is_slice.any()):
            return torch.ones(size, dtype=torch.bool)
        if self._range is not None:
            first, last = self._range
            return ~is_slice | ((index >= first) & (index <= last))
        positive = class_probabilities(output[CommonKeys.PRED])[:, 1].detach().cpu() >= 0.5
        return ~is_slice | positive


def parse_slice_range(slices: str) -> tuple[int, int] | None:
    """``"N-M"`` as ``(N, M)``; ``None`` for ``"positive"`` and ``"all"``.

    Raises:
        ValueError: anything else, or N > M.
    """
    if slices in ("positive", "all"):
        return None
    first, separator, last = str(slices).partition("-")
    if separator and first.strip().isdigit() and last.strip().isdigit() and int(first) <= int(last):
        return int(first), int(last)
    raise ValueError(f"slices must be 'positive', 'all' or 'N-M' with 0 <= N <= M, got {slices!r}")


class ExplanationWriter:
    """Write each explained image's outputs into ``output_dir`` with the configured ``writers``.

    Per image, the handler brings every map and counterfactual back from the model's grid to the source grid with
    ``Invertd`` (continuous interpolation), takes the geometry the loader recorded (NIfTI sources: the file's affine
    and shape, exactly; DICOM sources: the loader's affine; PNG/JPEG: the identity, one unit per pixel), and hands one
    :class:`~medxgan_monai.io.explanation_outputs.ExplainedImage` to each writer (see
    :mod:`medxgan_monai.io.explanation_outputs`: NIfTI maps, NIfTI counterfactuals, panel, sweep GIF, DICOM derived
    series). Predictions and failures go to the :class:`InferenceReport`. A failure while writing one image is
    reported and the rest continue. Each image's files are staged and committed together by an
    :class:`~medxgan_monai.io.OutputLedger`, so an interrupted run leaves no half-written file and a rerun skips
    complete images; existing files the run did not write are never overwritten unless ``overwrite``. When the
    evaluator completes, the ledger's lock on the output folder is released.

    Args:
        output_dir: destination folder.
        preprocessing: the transform that made the model's input (inverted to return to the source grid).
        report: collects predictions and problems.
        writers: callables ``writer(item, folder)``; default: every output kind
            (:func:`~medxgan_monai.io.explanation_outputs.default_writers`).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        preprocessing,
        report: InferenceReport,
        writers: Sequence | None = None,
        overwrite: bool = False,
        ledger: OutputLedger | None = None,
        image_key: str = CommonKeys.IMAGE,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.ledger = ledger if ledger is not None else OutputLedger(output_dir, overwrite)
        self.preprocessing = preprocessing
        self.report = report
        self.writers = list(writers) if writers is not None else default_writers()
        self.image_key = image_key
        self._slices: dict[str, dict[int, tuple[ExplainedImage, dict, bool]]] = {}  # volumes being assembled
        self._failed_volumes: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        # an evaluator runs one epoch: the report is complete when it ends, before a metrics logger reads it
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report.write)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.ledger.release())

    def __call__(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        output = explained_output(engine, type(self).__name__)
        images = decollate_batch({self.image_key: engine.state.batch[self.image_key]})
        images = [item[self.image_key] for item in images]
        stems = engine.state.batch.get("stem") or [
            output_stem(Path(str(image.meta["filename_or_obj"]))) for image in images
        ]
        probabilities = class_probabilities(output[CommonKeys.PRED])[:, 1]
        volume = VolumeKeys.of(engine.state.batch, len(images))
        for index, (image, stem) in enumerate(zip(images, stems, strict=True)):
            source = str(image.meta["filename_or_obj"])
            if volume.slice[index] >= 0:
                self._add_slice(stem, image, output, index, probabilities[index], volume)
                continue
            if FAILURE in output:
                self.report.add_problem(stem, source, output[FAILURE])
                continue
            try:
                folder = self.ledger.staging(stem)
                item = self.explained_image(stem, image, output[ATTRIBUTIONS], index, probabilities[index])
                for writer in self.writers:
                    writer(item, folder)
                row = self.report.prediction_row(stem, source, output, index)
                self.ledger.commit(stem, row)
            except Exception as error:  # one image's failure must not stop the batch
                self.ledger.discard([stem])
                self.report.add_problem(stem, source, f"writing outputs failed: {type(error).__name__}: {error}")
                continue
            self.report.predictions.append(row)

    def _add_slice(self, stem: str, image: MetaTensor, output: Mapping, index: int, probability, volume) -> None:
        """Keep one slice of a volume; when the volume's last slice comes, write the volume (a volume with a slice
        that failed is one problem, reported once)."""
        source = volume.source[index]
        if stem in self._failed_volumes:
            return
        try:
            if FAILURE in output:
                raise _VolumeFailed(output[FAILURE])
            item = self.explained_image(stem, image, output[ATTRIBUTIONS], index, probability)
            explained = bool(output.get(EXPLAINED, torch.ones(index + 1, dtype=torch.bool))[index])
            path = str(image.meta["filename_or_obj"])
            row = self.report.slice_row(stem, path, output, index, volume.slice[index], explained)
            slices = self._slices.setdefault(stem, {})
            slices[volume.slice[index]] = (item, row, explained)
            if len(slices) == volume.count[index]:
                self._write_volume(stem, source, volume.axis[index])
        except Exception as error:  # one volume's failure must not stop the batch
            self._slices.pop(stem, None)
            self._failed_volumes.add(stem)
            self.ledger.discard([stem])
            problem = str(error) if isinstance(error, _VolumeFailed) else f"{type(error).__name__}: {error}"
            self.report.add_problem(stem, source, f"slice {volume.slice[index]}: {problem}")

    def _write_volume(self, stem: str, source: str, axis: int) -> None:
        slices = self._slices.pop(stem)
        ordered = [slices[k] for k in sorted(slices)]
        item = stack_slices(stem, source, [s[0] for s in ordered], axis, [s[2] for s in ordered])
        folder = self.ledger.staging(stem)
        for writer in self.writers:
            writer(item, folder)
        row = volume_row(item, [s[1] for s in ordered])
        self.ledger.commit(stem, row)
        self.report.predictions.append(row)

    def explained_image(
        self, stem: str, image: MetaTensor, attributions: Mapping[str, Attribution], index: int, probability
    ) -> ExplainedImage:
        """Image ``index`` of the batch's ``attributions``, in both grids, with its source geometry."""
        counterfactuals = counterfactuals_by_name(attributions)
        volumes = {method: attribution.maps[index] for method, attribution in attributions.items()}
        volumes.update({f"counterfactual:{n}": a.counterfactual[index] for n, a in counterfactuals.items()})
        in_source_grid = self._invert(image, volumes)
        affine, shape = output_geometry(image.meta)
        item = ExplainedImage(
            stem=stem,
            source=str(image.meta["filename_or_obj"]),
            source_format=str(image.meta[SOURCE_FORMAT]),
            affine=affine,
            shape=shape,
            image=image[0].detach().cpu().numpy(),
            probability=float(probability),
        )
        for name, attribution in counterfactuals.items():
            item.counterfactuals[name] = ExplainedCounterfactual(
                image=attribution.counterfactual[index, 0].detach().cpu().numpy(),
                in_source_grid=in_source_grid[f"counterfactual:{name}"],
                probability=float(attribution.counterfactual_probability[index]),
            )
        for method, attribution in attributions.items():
            result = ExplainedMethod(
                title=METHODS[method].title,
                in_panel=METHODS[method].panel,
                saliency=attribution.maps[index, 0].detach().cpu().numpy(),
                saliency_in_source_grid=in_source_grid[method],
                counterfactual_name=METHODS[method].counterfactual if attribution.counterfactual is not None else None,
                peak=None if attribution.peak is None else float(attribution.peak[index]),
            )
            if attribution.sweep is not None:
                sweep = attribution.sweep
                result.sweep = (
                    sweep.frames[index, :, 0].detach().cpu().numpy(),
                    sweep.probabilities[index].tolist(),
                    sweep.alphas.tolist(),
                )
            item.methods[method] = result
        if item.image.ndim == 3:  # a volume explained whole by a 3D model
            return native_volume(item, _slice_sources(image.meta, item))
        return item

    def _invert(self, image: MetaTensor, volumes: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        data = {self.image_key: image}
        for name, volume in volumes.items():
            data[name] = MetaTensor(
                volume.detach().cpu().float(), meta=dict(image.meta), applied_operations=list(image.applied_operations)
            )
        inverter = Invertd(
            keys=list(volumes), transform=self.preprocessing, orig_keys=self.image_key, nearest_interp=False
        )
        inverted = inverter(data)
        return {name: np.asarray(inverted[name].detach().cpu().numpy()[0], dtype=np.float32) for name in volumes}


def _slice_sources(meta: Mapping, item: ExplainedImage) -> list[str]:
    """A whole volume's slice files: a DICOM volume's as its loader recorded them; a NIfTI volume's file, once per
    slice along its last axis."""
    if SLICE_SOURCES in meta:
        return [str(path) for path in json.loads(str(meta[SLICE_SOURCES]))]
    return [item.source] * int(next(iter(item.methods.values())).saliency_in_source_grid.shape[2])


SLICE_ROWS = "slice_rows"


def volume_row(volume: ExplainedImage, slice_rows: list[dict]) -> dict:
    """A volume's predictions.csv row: its most positive slice's row with the volume's source, probability (the
    maximum over its slices) and seconds (their sum), and its slices' rows under :data:`SLICE_ROWS`."""
    top = slice_rows[volume.volume.top_slice]
    row = {**top, "source": volume.source, "slice": "", "probability": f"{volume.probability:.6f}"}
    row["predicted_label"] = int(volume.probability >= 0.5)
    row[SECONDS] = {m: float(sum(r[SECONDS].get(m, 0.0) for r in slice_rows)) for m in top[SECONDS]}
    row[SLICE_ROWS] = slice_rows
    return row


class _VolumeFailed(RuntimeError):
    """A batch holding a slice of the volume could not be explained."""


@dataclass(frozen=True)
class VolumeKeys:
    """A batch's slice keys (see :mod:`medxgan_monai.data.volumes`), one value per image."""

    slice: list[int]
    count: list[int]
    axis: list[int]
    source: list[str]

    @classmethod
    def of(cls, batch: Mapping, size: int) -> VolumeKeys:
        def ints(key: str, default: int) -> list[int]:
            return [int(v) for v in torch.as_tensor(batch.get(key, [default] * size)).reshape(-1).tolist()]

        return cls(
            ints("slice", -1), ints("slices", 0), ints("slice_axis", -1), list(batch.get("volume_source", [""] * size))
        )
