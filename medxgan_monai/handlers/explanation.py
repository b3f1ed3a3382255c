"""Ignite handlers that explain each evaluated batch and write the results next to the source scans."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd
from monai.utils import CommonKeys

from medxgan_monai.data.inputs import InputProblem, output_stem
from medxgan_monai.explain.base import SaliencyExplainer
from medxgan_monai.explain.medxgan import Explanation, MedXGANExplainer
from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.io.atomic import atomic_write_csv
from medxgan_monai.io.dicom_derived import write_overlay_secondary_capture, write_saliency_parametric_map
from medxgan_monai.io.figures import saliency_overlay, write_panel, write_sweep_gif
from medxgan_monai.io.ledger import OutputLedger
from medxgan_monai.io.nifti import output_geometry, write_nifti
from medxgan_monai.networks.classifier import class_probabilities
from medxgan_monai.transforms.io import detect_format, load_scan

__all__ = ["ExplanationHandler", "ExplanationWriter", "InferenceFailed", "InferenceReport"]

logger = logging.getLogger(__name__)

EXPLANATION = "explanation"
MAPS = "maps"
SECONDS = "seconds"
FAILURE = "explanation_failure"
#: the methods that come out of one medXGAN explanation
MEDXGAN_METHODS = MedXGANExplainer.methods
PANEL_METHODS = ("medxgan_ig", "medxgan", "medxgan_lig", "gradcam", "ig")


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
        explanation = output.get(EXPLANATION)
        return {
            "stem": stem,
            "source": path,
            "probability": f"{probability:.6f}",
            "predicted_label": int(probability >= 0.5),
            "counterfactual_probability": ""
            if explanation is None
            else f"{float(explanation.counterfactual_probability[index]):.6f}",
            "residual_counterfactual_probability": ""
            if explanation is None
            else f"{float(explanation.residual_counterfactual_probability[index]):.6f}",
            SECONDS: dict(output.get(SECONDS, {})),
        }

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
        columns = ["stem", "source", "probability", "predicted_label", "counterfactual_probability"]
        columns.append("residual_counterfactual_probability")
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
    """Explain every batch an evaluator sees; put the maps, the medXGAN explanation and timings in its output.

    After each iteration ``engine.state.output`` (a batch dict: use an evaluator with ``decollate=False``) gains
    ``"maps"`` ({method: (B, 1, *spatial) in [0, 1]}), ``"explanation"`` (the :class:`Explanation`, when the medXGAN
    explainer ran) and ``"seconds"`` ({method: seconds per image}); if explaining the batch fails, it gains
    ``"explanation_failure"`` (the reason) instead and the run continues.

    Args:
        explainers: method name -> :class:`SaliencyExplainer`, plus optionally ``"medxgan"`` ->
            :class:`MedXGANExplainer` (which yields the ``medxgan``, ``medxgan_lig`` and ``medxgan_ig`` maps).
        methods: the methods to run, in order; ``None`` runs every explainer given.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.ExplanationHandler",
         "explainers": {"medxgan": "@medxgan_explainer", "gradcam": "@gradcam"}, "methods": "@methods"}
    """

    def __init__(
        self,
        explainers: Mapping[str, SaliencyExplainer | MedXGANExplainer],
        methods: Sequence[str] | None = None,
        image_key: str = CommonKeys.IMAGE,
    ) -> None:
        available = set(explainers) | (set(MEDXGAN_METHODS) if "medxgan" in explainers else set())
        self.methods = list(methods) if methods is not None else sorted(available)
        unknown = [m for m in self.methods if m not in available]
        if unknown:
            raise ValueError(f"unknown explanation method(s) {unknown}; available: {sorted(available)}")
        self.explainers = dict(explainers)
        self.image_key = image_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        try:
            self._explain(output)
        except Exception as error:  # a failing batch is reported by the writer; the run goes on
            logger.exception("explanation failed for iteration %d", engine.state.iteration)
            output[FAILURE] = f"explanation failed: {type(error).__name__}: {error}"

    def _explain(self, output: dict) -> None:
        maps, explanation, seconds = self.explain(output[self.image_key])
        if explanation is not None:
            output[EXPLANATION] = explanation
        output[MAPS], output[SECONDS] = maps, seconds

    def explain(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], Explanation | None, dict[str, float]]:
        """Every method's maps for ``images``, the medXGAN :class:`Explanation` (``None`` when no medXGAN method
        runs) and the seconds per image of each explainer (``medxgan`` for the one explanation behind both maps)."""
        maps: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        explanation = None
        if any(m in MEDXGAN_METHODS for m in self.methods):
            start = time.perf_counter()
            explanation = self.explainers["medxgan"](images)
            seconds["medxgan"] = (time.perf_counter() - start) / len(explanation)
            maps.update({m: explanation.maps[m] for m in self.methods if m in MEDXGAN_METHODS})
        for method in self.methods:
            if method in MEDXGAN_METHODS:
                continue
            start = time.perf_counter()
            maps[method] = self.explainers[method](images)
            seconds[method] = (time.perf_counter() - start) / images.shape[0]
        return {m: maps[m] for m in self.methods}, explanation, seconds


class ExplanationWriter:
    """Write each explained image's outputs into ``output_dir``, in the source's geometry.

    Per image ``<stem>``: ``<stem>_<method>.nii.gz`` (float maps) and ``<stem>_counterfactual.nii.gz``, brought back
    from the model's grid to the source grid with ``Invertd`` (continuous interpolation) and written with the
    source's own affine (NIfTI sources: the file's affine, exactly; DICOM sources: the loader's affine; PNG/JPEG
    sources, which carry no geometry: the identity, one unit per pixel, i along a row and j down the columns);
    ``<stem>_panel.png``; ``<stem>_sweep.gif``; for DICOM sources, a Secondary Capture overlay and a Parametric Map
    of the medXGAN map as new series of the source study. Predictions and failures go to the :class:`InferenceReport`.
    A failure while writing one image is reported and the rest continue. Each image's files are staged and committed
    together by an :class:`~medxgan_monai.io.OutputLedger`, so an interrupted run leaves no half-written file and a
    rerun skips complete images; existing files the run did not write are never overwritten unless ``overwrite``.
    When the evaluator completes, the ledger's lock on the output folder is released.

    Args:
        output_dir: destination folder.
        preprocessing: the transform that made the model's input (inverted to return to the source grid).
        report: collects predictions and problems.
        dicom_method: the map stored in DICOM outputs; when the run does not compute it, its first map.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        preprocessing,
        report: InferenceReport,
        panel: bool = True,
        sweep: bool = True,
        dicom: bool = True,
        dicom_method: str = "medxgan_ig",
        overwrite: bool = False,
        ledger: OutputLedger | None = None,
        image_key: str = CommonKeys.IMAGE,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.ledger = ledger if ledger is not None else OutputLedger(output_dir, overwrite)
        self.preprocessing = preprocessing
        self.report = report
        self.panel, self.sweep, self.dicom = panel, sweep, dicom
        self.dicom_method = dicom_method
        self.image_key = image_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        # an evaluator runs one epoch: the report is complete when it ends, before a metrics logger reads it
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report.write)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.ledger.release())

    def __call__(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        output = engine.state.output
        items = decollate_batch({self.image_key: engine.state.batch[self.image_key]})
        stems = engine.state.batch.get("stem") or [
            output_stem(Path(str(i[self.image_key].meta["filename_or_obj"]))) for i in items
        ]
        for item, stem in zip(items, stems, strict=True):
            item["stem"] = stem
        probabilities = class_probabilities(output[CommonKeys.PRED])[:, 1]
        explanation = output.get(EXPLANATION)
        for index, item in enumerate(items):
            source = str(item[self.image_key].meta["filename_or_obj"])
            if FAILURE in output:
                self.report.add_problem(item["stem"], source, output[FAILURE])
                continue
            try:
                folder = self.ledger.staging(item["stem"])
                self._write_item(folder, index, item, output, explanation, float(probabilities[index]))
                row = self.report.prediction_row(item["stem"], source, output, index)
                self.ledger.commit(item["stem"], row)
            except Exception as error:  # one image's failure must not stop the batch
                self.ledger.discard([item["stem"]])
                self.report.add_problem(
                    item["stem"], source, f"writing outputs failed: {type(error).__name__}: {error}"
                )
                continue
            self.report.predictions.append(row)

    def _write_item(self, folder: Path, index: int, item: dict, output: dict, explanation, probability: float) -> None:
        """Write the image's files into the staging ``folder`` (empty and private, so nothing there is overwritten)."""
        image: MetaTensor = item[self.image_key]
        stem, source = item["stem"], str(image.meta["filename_or_obj"])
        volumes = {name: maps[index] for name, maps in output[MAPS].items()}
        if explanation is not None:
            volumes["counterfactual"] = explanation.counterfactual[index]
            volumes["residual_counterfactual"] = explanation.residual_counterfactual[index]
        in_source_grid = self._invert(image, volumes)
        kind = detect_format(source)
        affine, shape = output_geometry(source, kind, image.meta.get("original_affine"))
        for name, array in in_source_grid.items():
            path = folder / f"{stem}_{name}.nii.gz"
            write_nifti(array.reshape(shape or array.shape), affine, path, overwrite=False)
        if self.panel:
            self._write_panel(folder, stem, image, output, explanation, index, probability)
        if self.sweep and explanation is not None:
            write_sweep_gif(
                folder / f"{stem}_sweep.gif",
                explanation.sweep_frames[index, :, 0].cpu().numpy(),
                explanation.sweep_probabilities[index].tolist(),
                explanation.sweep_alphas.tolist(),
                overwrite=False,
            )
        dicom_method = self.dicom_method if self.dicom_method in output[MAPS] else next(iter(output[MAPS]), None)
        if self.dicom and kind == "dicom" and dicom_method is not None:
            self._write_dicom(folder, stem, source, dicom_method, in_source_grid[dicom_method])

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

    def _write_panel(self, folder: Path, stem, image, output, explanation, index, probability) -> None:
        picture = image[0].detach().cpu().numpy()
        maps = {m: output[MAPS][m][index, 0].cpu().numpy() for m in PANEL_METHODS if m in output[MAPS]}
        captions = {"image": f"image\np={probability:.2f}"}
        counterfactual = np.zeros_like(picture)
        if explanation is not None:
            # the counterfactual behind the default map: the real image with the lesion removed
            counterfactual = explanation.residual_counterfactual[index, 0].cpu().numpy()
            probability_without = float(explanation.residual_counterfactual_probability[index])
            captions["counterfactual"] = f"residual counterfactual\np={probability_without:.2f}"
        # MONAI's arrays are (x, y): transpose so the PNG shows rows as a viewer would
        write_panel(
            folder / f"{stem}_panel.png",
            picture.T,
            counterfactual.T,
            {m: v.T for m, v in maps.items()},
            captions,
            overwrite=False,
        )

    def _write_dicom(self, folder: Path, stem: str, source: str, method: str, saliency: np.ndarray) -> None:
        dataset = pydicom.dcmread(source, stop_before_pixels=True)
        # MONAI's pydicom reader returns (columns, rows); DICOM pixel data is (rows, columns)
        saliency_rows = np.clip(saliency.T, 0, 1)
        # the project's loader applies the rescale and inverts MONOCHROME1, as for the model's input
        pixels = load_scan(source)[0].numpy().T
        low, high = np.percentile(pixels, (0.5, 99.5))
        picture = np.clip((pixels - low) / max(high - low, 1e-6), 0, 1)
        write_overlay_secondary_capture(
            dataset,
            saliency_overlay(picture, saliency_rows),
            folder / f"{stem}_overlay_sc.dcm",
            overwrite=False,
        )
        write_saliency_parametric_map(dataset, saliency_rows, folder / f"{stem}_{method}_pm.dcm", overwrite=False)
