"""Ignite handlers that explain each evaluated batch and write the results next to the source scans."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
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
)
from medxgan_monai.io.ledger import OutputLedger
from medxgan_monai.io.nifti import SOURCE_FORMAT, output_geometry
from medxgan_monai.networks.classifier import class_probabilities

__all__ = ["ATTRIBUTIONS", "FAILURE", "SECONDS", "ExplanationHandler", "ExplanationWriter", "InferenceFailed"]
__all__ += ["InferenceReport", "explained_output"]

logger = logging.getLogger(__name__)

#: keys the :class:`ExplanationHandler` adds to ``engine.state.output``
ATTRIBUTIONS = "attributions"
SECONDS = "seconds"
FAILURE = "explanation_failure"
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

    ``predictions.csv``: stem, source, probability, predicted label, counterfactual probabilities (G(z_a, 0) and the
    refined residual counterfactual), seconds per method.
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
        columns = ["stem", "source", "probability", "predicted_label", *COUNTERFACTUAL_COLUMNS]
        methods = _timed_methods(self.completed + self.predictions)
        rows = [
            # rows resumed from a run of an earlier version may lack the newer columns
            [row.get(c, "") for c in columns] + [f"{row[SECONDS].get(m, float('nan')):.4f}" for m in methods]
            for row in self.completed + self.predictions
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

    Args:
        explainers: the requested methods' :class:`~medxgan_monai.explain.Explainers`.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.ExplanationHandler", "explainers": "@explainers"}
    """

    def __init__(self, explainers: Explainers, image_key: str = CommonKeys.IMAGE) -> None:
        self.explainers = explainers
        self.image_key = image_key

    @property
    def methods(self) -> list[str]:
        return self.explainers.methods

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        try:
            output[ATTRIBUTIONS], output[SECONDS] = self.explainers.explain(output[self.image_key])
        except Exception as error:  # a failing batch is reported by the writer; the run goes on
            logger.exception("explanation failed for iteration %d", engine.state.iteration)
            output[FAILURE] = f"explanation failed: {type(error).__name__}: {error}"


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
        for index, (image, stem) in enumerate(zip(images, stems, strict=True)):
            source = str(image.meta["filename_or_obj"])
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
            )
            if attribution.sweep is not None:
                sweep = attribution.sweep
                result.sweep = (
                    sweep.frames[index, :, 0].detach().cpu().numpy(),
                    sweep.probabilities[index].tolist(),
                    sweep.alphas.tolist(),
                )
            item.methods[method] = result
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
