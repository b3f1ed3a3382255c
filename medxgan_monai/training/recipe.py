"""The medXGAN training recipe as data, and one call that runs it on any datalist.

The recipe that made the shipped weights (``scripts/train_gan.sh`` until 0.10) is a sequence of :class:`Phase` s,
each one bundle run of the training configs with its own settings: the classifier, the GAN with the paper's classifier
weight, a fine-tune with a stronger classifier weight followed by the encoder, the encoder with the counterfactual
term, and the counterfactual encoder (``phases`` of ``bundle/configs/train_explainer.json``, the one place the recipe
is written). Phase lengths are in **images seen**, not epochs, so that a datalist of 600
training images and one of 20,000 get the same amount of training per phase: a phase of ``n`` images runs
``ceil(n / training images)`` epochs, at least one. The shipped lengths are the demo's epochs times its 2,000 training
images.

:class:`ExplainerTraining` plans the phases for a datalist (``plan.json``), runs them one after the other (each in its
own folder under the output folder, each initialised from the one before), resumes after an interruption (a finished
phase is not run again; an interrupted GAN or counterfactual-encoder phase continues from its last checkpoint; an
interrupted classifier phase starts again), evaluates the result with the evaluation bundle and writes ``report.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medxgan_monai.bundle import (
    DEFAULT_BUNDLE,
    config_values,
    default_tracking_uri,
    latest_checkpoint,
    overlay_configs,
    unwrap_config_error,
)
from medxgan_monai.data.datalist import load_datalist
from medxgan_monai.handlers.training_progress import PlanProgress, metric_number
from medxgan_monai.handlers.validity_stop import ValidityStop
from medxgan_monai.io.atomic import atomic_write_text
from medxgan_monai.training.budget import (
    BudgetError,
    Calibration,
    CallsEveryImage,
    EpochStopwatch,
    fit_to_budget,
    phase_seconds,
    scaled,
)
from medxgan_monai.training.curves import plot_training_curves, read_history

__all__ = ["PHASE_KINDS", "ExplainerTraining", "Phase", "PhaseError", "run_bundle_workflow"]

logger = logging.getLogger(__name__)

#: the training configs (under ``<bundle>/configs``) each kind of phase runs, and the prefix of its checkpoints
PHASE_KINDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "classifier": (("train_classifier.json",), None),
    "gan": (("train_classifier.json", "train_gan.json"), "gan"),
    "counterfactual_encoder": (
        ("train_classifier.json", "train_gan.json", "train_counterfactual_encoder.json"),
        "counterfactual_encoder",
    ),
}
#: the file that marks a finished phase in its folder
PHASE_COMPLETE = "phase_complete.json"
#: each epoch's progress line as data, in the phase's folder (the report's curves)
HISTORY = "history.jsonl"


class PhaseError(ValueError):
    """A phase is not well formed, or the phases do not make a recipe (a phase lacks the one it needs before it)."""


@dataclass(frozen=True)
class Phase:
    """One bundle run of the recipe.

    Args:
        name: its folder under the output folder (letters, digits, ``_`` and ``-``).
        kind: ``"classifier"``, ``"gan"`` (G and D, then the encoder E against the frozen G) or
            ``"counterfactual_encoder"`` (:data:`PHASE_KINDS`).
        images: images seen by a classifier or counterfactual-encoder phase.
        gan_images: images G and D train on in a GAN phase (0: G is frozen from the start).
        encoder_images: images E trains on in a GAN phase, once G and D stop (0: no encoder).
        settings: config overrides of this phase (e.g. ``{"train#trainer#lambda_classifier": 6.0}``).
    """

    name: str
    kind: str
    images: int = 0
    gan_images: int = 0
    encoder_images: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise PhaseError(f"phase name {self.name!r} must be letters, digits, '_' or '-' (it names a folder)")
        if self.kind not in PHASE_KINDS:
            raise PhaseError(f"phase {self.name}: kind {self.kind!r} is not one of {sorted(PHASE_KINDS)}")
        lengths = {"images": self.images, "gan_images": self.gan_images, "encoder_images": self.encoder_images}
        for key, value in lengths.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PhaseError(f"phase {self.name}: {key} must be a whole number >= 0, not {value!r}")
        if self.kind == "gan" and self.gan_images + self.encoder_images == 0:
            raise PhaseError(f"phase {self.name}: a GAN phase needs gan_images or encoder_images")
        if self.kind != "gan" and (self.images == 0 or self.gan_images or self.encoder_images):
            raise PhaseError(f"phase {self.name}: a {self.kind} phase needs images (and no gan_/encoder_images)")

    @classmethod
    def of(cls, entry: Phase | Mapping) -> Phase:
        """A phase from its config entry (a mapping of the fields), or the phase itself."""
        if isinstance(entry, Phase):
            return entry
        unknown = set(entry) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise PhaseError(f"phase {entry.get('name', '?')}: unknown field(s) {sorted(unknown)}")
        return cls(**dict(entry))

    def epochs(self, training_images: int) -> dict[str, int]:
        """The trainer settings that make this phase's lengths on ``training_images`` images: ``max_epochs`` and,
        for a GAN phase, the epochs at which G and D stop and E starts."""
        if self.kind != "gan":
            return {"train#trainer#max_epochs": _epochs(self.images, training_images)}
        gan, encoder = _epochs(self.gan_images, training_images), _epochs(self.encoder_images, training_images)
        return {
            "train#trainer#max_epochs": gan + encoder,
            "train#trainer#gan_stop_epoch": gan + 1,
            "train#trainer#encoder_start_epoch": gan + 1,
        }


def _epochs(images: int, training_images: int) -> int:
    """Epochs over ``training_images`` that see at least ``images`` images: 0 for none, else at least 1."""
    return 0 if images == 0 else max(1, math.ceil(images / training_images))


class ExplainerTraining:
    """Train a classifier (or take one) and a medXGAN explainer for it on a datalist, phase by phase, then evaluate.

    Args:
        datalist: the datalist (sections ``training``, ``validation`` and, for the evaluation, ``test``).
        output_dir: one folder per phase, ``plan.json``, ``evaluation/`` and ``report.md``.
        phases: the recipe (:class:`Phase` s or their config mappings; ``train_explainer.json`` lists the shipped one).
        classifier_ckpt: explain this classifier: the classifier phase is left out.
        settings: config overrides for every phase that defines them (e.g. ``device``, network sizes: a nested id
            such as ``generator#channels`` goes to the phases whose configs define ``generator``); the evaluation gets
            those of
            ``device``, ``seed`` and the classifier's ``network_def`` (the ids the training and inference configs
            share), and the networks' sizes and weights from the last phase's ``registry_overrides``.
        evaluation_settings: config overrides for the evaluation only (e.g. ``methods``, ``bootstrap_samples``).
        register_model_name: register the explainer in the MLflow model registry under this name (by the last phase).
        evaluate: run the evaluation bundle after training.
        bundle_root: the bundle whose configs run.
        validity_target: a GAN phase stops training G and D once the validation's counterfactual validity reaches
            this both ways (:class:`~medxgan_monai.handlers.ValidityStop`; its encoder epochs follow at once);
            ``None``: every planned epoch.
        max_minutes: a time budget for the training (the calibration included, the evaluation not): the phases are
            measured on this machine with a few iterations each (:mod:`~medxgan_monai.training.budget`,
            ``calibration.json``) and all shortened by one factor until the plan fits; ``None``: the recipe as
            written. A rerun with the same budget reuses the calibration and so makes the same plan.
        calibration_iterations: training iterations per stage in each calibration run.
        progress_bar: a progress bar per epoch on a terminal (none when the output is not a terminal).
        overlays: config files of the bundle (names under ``configs/``) added to every phase's configs and the
            evaluation's, e.g. ``["3d.json"]``: a 3D classifier and a 3D explainer of whole volumes.

    Example::

        phases = [{"name": "gan", "kind": "gan", "gan_images": 120000}, ...]   # train_explainer.json's phases
        ExplainerTraining("data/mine/datalist.json", "outputs/mine", phases, settings={"device": "cuda"}).run()
    """

    def __init__(
        self,
        datalist: str | os.PathLike,
        output_dir: str | os.PathLike,
        phases: Sequence[Phase | Mapping],
        classifier_ckpt: str | os.PathLike | None = None,
        settings: Mapping[str, Any] | None = None,
        evaluation_settings: Mapping[str, Any] | None = None,
        register_model_name: str | None = None,
        evaluate: bool = True,
        bundle_root: str | os.PathLike = DEFAULT_BUNDLE,
        validity_target: float | None = 0.95,
        max_minutes: float | None = None,
        calibration_iterations: int = 8,
        progress_bar: bool = True,
        overlays: Sequence[str] = (),
    ) -> None:
        self.datalist = Path(datalist).resolve()
        self.output_dir = Path(output_dir).resolve()
        self.classifier_ckpt = Path(classifier_ckpt).resolve() if classifier_ckpt else None
        phases = [Phase.of(entry) for entry in phases]
        if self.classifier_ckpt is not None:
            phases = [phase for phase in phases if phase.kind != "classifier"]
        self.phases = phases
        self.settings = dict(settings or {})
        self.evaluation_settings = dict(evaluation_settings or {})
        self.register_model_name = register_model_name
        self.evaluate = evaluate
        self.bundle_root = Path(bundle_root).resolve()
        try:
            self.overlays = overlay_configs(self.bundle_root, overlays)
        except ValueError as error:
            raise PhaseError(str(error)) from None
        self.validity_target = validity_target
        if max_minutes is not None and not max_minutes > 0:
            raise PhaseError(f"the time budget must be a positive number of minutes, not {max_minutes!r}")
        self.max_minutes = max_minutes
        if calibration_iterations < 2:
            raise PhaseError(f"calibration_iterations must be at least 2 (a rate needs two): {calibration_iterations}")
        self.calibration_iterations = calibration_iterations
        self.progress_bar = progress_bar
        self._check_order()

    def _check_order(self) -> None:
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise PhaseError(f"phase names must be unique, got {names}")
        kinds = [phase.kind for phase in self.phases]
        if "classifier" in kinds[1:]:
            raise PhaseError("the classifier phase, when there is one, comes first")
        if self.classifier_ckpt is None and "classifier" not in kinds:
            raise PhaseError("no classifier phase and no classifier_ckpt: the explainer needs a classifier")
        if "gan" not in kinds:
            raise PhaseError("the recipe needs at least one GAN phase")
        if "counterfactual_encoder" in kinds and kinds.index("counterfactual_encoder") < kinds.index("gan"):
            raise PhaseError("the counterfactual encoder phase needs a GAN phase before it")

    def plan(self) -> list[dict]:
        """Each phase with its epochs for this datalist's training images (also written to ``plan.json``); with a
        time budget, the phases shortened to fit it (calibrating first unless ``calibration.json`` holds a
        calibration of this datalist and these settings)."""
        training_images = self._training_images()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"datalist": str(self.datalist), "training_images": training_images}
        phases, self._calibration = self.phases, None
        if self.max_minutes is not None:
            self._calibration = self.calibrate()
            left = self.max_minutes * 60 - self._calibration.seconds
            scale, phases = fit_to_budget(self.phases, training_images, self._calibration, left)
            record["budget"] = {
                "max_minutes": self.max_minutes,
                "calibration_seconds": round(self._calibration.seconds, 1),
                "scale": round(scale, 4),
                "estimated_seconds": round(
                    sum(phase_seconds(p, training_images, self._calibration) for p in phases), 1
                ),
                "replanned": [],
            }
            classifier = [
                new.images / old.images
                for old, new in zip(self.phases, phases, strict=True)
                if old.kind == "classifier" and old.images
            ]
            logger.info(
                "budget %g min: the phases at %.1f%% of the recipe's images%s",
                self.max_minutes,
                100 * scale,
                f", the classifier at {100 * classifier[0]:.1f}% (classifier first)" if classifier else "",
            )
        record["phases"] = [self._plan_entry(phase, training_images) for phase in phases]
        self._plan_record = record
        atomic_write_text(self.output_dir / "plan.json", json.dumps(record, indent=2) + "\n")
        return record["phases"]

    def _plan_entry(self, phase: Phase, training_images: int) -> dict:
        epochs = phase.epochs(training_images)
        images = epochs["train#trainer#max_epochs"] * training_images
        entry = {**asdict(phase), "settings": dict(phase.settings), "epochs": epochs, "images_planned": images}
        if self._calibration is not None:
            entry["estimated_seconds"] = round(phase_seconds(phase, training_images, self._calibration), 1)
        return entry

    def _replan(self, plan: list[dict], index: int) -> None:
        """Before phase ``index`` of a budgeted plan: the phases before it took ``ratio`` times their estimates;
        shorten the phases left (never lengthen them) so that their estimates times ``ratio`` fit the time left.
        When even one epoch per stage does not fit any more, the phases left run one epoch per stage, and the budget
        is exceeded (stopping would throw away what was trained)."""
        records = [json.loads((self.output_dir / p["name"] / PHASE_COMPLETE).read_text()) for p in plan[:index]]
        estimated = sum(p["estimated_seconds"] for p in plan[:index])
        if not records or estimated <= 0:
            return
        spent = sum(record["seconds"] for record in records)
        ratio = spent / estimated
        left = self.max_minutes * 60 - self._calibration.seconds - spent
        training_images = self._plan_record["training_images"]
        recipe, budget = self.phases[index:], self._plan_record["budget"]
        try:
            scale, phases = fit_to_budget(recipe, training_images, self._calibration.scaled(ratio), left)
        except BudgetError:
            scale, phases = 0.0, [scaled(phase, 0.0) for phase in recipe]
            logger.warning("the budget is spent: the %d phase(s) left run one epoch per stage", len(recipe))
        if scale >= (budget["replanned"][-1]["scale"] if budget["replanned"] else budget["scale"]):
            return
        logger.info(
            "the phases so far took %.2fx their estimates: the %d phase(s) left shortened to %.1f%% of the recipe",
            ratio,
            len(recipe),
            100 * scale,
        )
        plan[index:] = [self._plan_entry(phase, training_images) for phase in phases]
        budget["replanned"].append({"before": plan[index]["name"], "ratio": round(ratio, 3), "scale": round(scale, 4)})
        self._plan_record["phases"] = plan
        atomic_write_text(self.output_dir / "plan.json", json.dumps(self._plan_record, indent=2) + "\n")

    def _training_images(self) -> int:
        training_images = len(load_datalist(self.datalist, "training"))
        if training_images == 0:
            raise PhaseError(f"{self.datalist}: the training section is empty")
        return training_images

    def calibrate(self) -> Calibration:
        """Measure each kind of phase of the recipe with one short bundle run (``calibration/<kind>/``), chained like
        the phases; kept in ``calibration.json`` and reused while the datalist, the settings and the classifier are
        the same."""
        # each kind is measured with the settings of all its phases merged (a later phase's win): a term that only a
        # later phase switches on (the GAN encoder's counterfactual term: about 1.5 times the cost of an encoder
        # iteration without it) is then measured, and the plan errs on the long side for the phases without it
        merged: dict[str, dict] = {}
        for phase in self.phases:
            merged.setdefault(phase.kind, {}).update(phase.settings)
        key = {
            "datalist": str(self.datalist),
            "settings": _plain(self.settings),
            "classifier_ckpt": str(self.classifier_ckpt),
            "kinds": {kind: _plain(settings) for kind, settings in merged.items()},
            "iterations": self.calibration_iterations,
            # the bundle's configs as they are now: a changed network size or validation changes what is measured
            "configs": self._configs_digest(),
        }
        record_path = self.output_dir / "calibration.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record.get("key") == key:
                logger.info("calibration of %s reused: %s", self.datalist.name, record_path)
                return Calibration.of(record["calibration"])
        calibration, started = Calibration(), time.monotonic()
        weights = {"classifier_ckpt": str(self.classifier_ckpt)} if self.classifier_ckpt else {}
        trial_lengths = {
            "classifier": {"images": 1},
            "gan": {"gan_images": 1, "encoder_images": 1},
            "counterfactual_encoder": {"images": 1},
        }
        for kind in PHASE_KINDS:
            if kind not in merged:
                continue
            trial = Phase(kind, kind, settings=merged[kind], **trial_lengths[kind])
            folder = self.output_dir / "calibration" / kind
            overrides = self._overrides(trial, trial.epochs(1), weights, folder, resume=False)
            stopwatch, natural = EpochStopwatch(), {}

            def shorten(trainer, parser, stopwatch=stopwatch, natural=natural, kind=kind) -> None:
                natural["iterations"] = trainer.state.epoch_length  # a full epoch (or the settings' epoch_length)
                trainer.state.epoch_length = min(self.calibration_iterations, natural["iterations"])
                stopwatch.attach(trainer)
                if kind == "counterfactual_encoder":  # it trains on the images called positive: measure them all
                    trainer.refiner.classifier = CallsEveryImage(trainer.refiner.classifier, trainer.refiner.target)

            logger.info("calibrating the %s phases: %d iterations per stage", kind, self.calibration_iterations)
            start = time.perf_counter()
            _, produced = self._train(kind, overrides, shorten)
            calibration.record(kind, time.perf_counter() - start, stopwatch.epochs, natural["iterations"])
            weights.update(produced)
        calibration.seconds = time.monotonic() - started
        atomic_write_text(record_path, json.dumps({"key": key, "calibration": calibration.as_dict()}, indent=2) + "\n")
        return calibration

    def _configs_digest(self) -> str:
        """A digest of every config file the phases run (overlays included), in order."""
        names = dict.fromkeys(name for configs, _ in PHASE_KINDS.values() for name in (*configs, *self.overlays))
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode() + b"\0" + (self.bundle_root / "configs" / name).read_bytes())
        return digest.hexdigest()

    def run(self) -> dict:
        """Run the phases not finished yet, then the evaluation and the report; returns the final weights (the
        evaluation bundle's overrides naming them)."""
        plan = self.plan()  # the calibration, if any, is not part of the plan's rate
        self._started, self._images_done = time.monotonic(), 0
        weights = {"classifier_ckpt": str(self.classifier_ckpt)} if self.classifier_ckpt else {}
        for index in range(len(plan)):
            unfinished = [p for p in plan[index:] if not (self.output_dir / p["name"] / PHASE_COMPLETE).is_file()]
            if self.max_minutes is not None and unfinished and unfinished[0] is plan[index]:
                self._replan(plan, index)
                unfinished = plan[index:]
            planned = plan[index]
            left = sum(p["images_planned"] for p in unfinished)
            progress = PlanProgress(
                planned["name"],
                index + 1,
                len(plan),
                planned["images_planned"],
                left,
                self._started,
                self._images_done,
                history_file=self.output_dir / planned["name"] / HISTORY,
            )
            last = index == len(plan) - 1
            weights = self._run_phase(Phase.of(_phase_fields(planned)), planned["epochs"], weights, last, progress)
        evaluation = self._evaluate(weights) if self.evaluate else None
        self._report(plan, weights, evaluation)
        return weights

    def _folder(self, phase: Phase) -> Path:
        return self.output_dir / phase.name

    def _run_phase(self, phase: Phase, epochs: dict, weights: dict, last: bool, progress: PlanProgress) -> dict:
        """Run ``phase`` unless it finished before; returns ``weights`` with what it made."""
        folder = self._folder(phase)
        marker = folder / PHASE_COMPLETE
        if marker.is_file():
            logger.info("phase %s finished before: not run again", phase.name)
            return {**weights, **json.loads(marker.read_text())["weights"]}
        prefix = PHASE_KINDS[phase.kind][1]
        resume = bool(prefix) and bool(latest_checkpoint(folder / "models", prefix, required=False))
        overrides = self._overrides(phase, epochs, weights, folder, resume)
        if last and self.register_model_name:
            overrides["register_model_name"] = self.register_model_name
        logger.info("phase %s (%s): %s%s", phase.name, phase.kind, epochs, ", resumed" if resume else "")
        stop = ValidityStop(self.validity_target) if phase.kind == "gan" and self.validity_target else None

        def watch(trainer, parser) -> None:
            # the classifier's validation metrics are its evaluator's; the GAN validators write the trainer's
            validators = [parser.get_parsed_content("validate#evaluator")] if phase.kind == "classifier" else []
            progress.attach(trainer, *validators)
            if stop is not None:
                stop.attach(trainer)
            if self.progress_bar:
                _attach_progress_bar(trainer, f"{phase.name} epoch")

        start = time.monotonic()
        trainer, produced = self._train(phase.kind, overrides, watch)
        self._images_done += progress.done(trainer)
        metrics = {**progress.metrics(trainer), "epochs_run": trainer.state.epoch}
        record = {
            "phase": phase.name,
            "seconds": round(time.monotonic() - start, 1),
            "epochs": epochs,
            "resumed": resume,
            "stopped_early": stop.stopped if stop is not None else None,
            "metrics": {key: number for key, value in metrics.items() if (number := metric_number(value)) is not None},
            "weights": produced,
        }
        atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
        return {**weights, **produced}

    def _overrides(self, phase: Phase, epochs: dict, weights: dict, folder: Path, resume: bool) -> dict:
        """The bundle overrides of one run of ``phase`` in ``folder``, starting from ``weights``."""
        configs, prefix = PHASE_KINDS[phase.kind]
        settings = self._applicable({**self.settings, **dict(phase.settings)}, (*configs, *self.overlays))
        overrides = {**settings, **epochs, **self._inputs(phase, weights)}
        overrides.update(datalist=str(self.datalist), output_dir=str(folder))
        if prefix:
            overrides["resume"] = resume
        return overrides

    def _applicable(self, settings: Mapping[str, Any], configs: Sequence[str]) -> dict:
        """The settings a phase's configs can take: top-level ids, and nested ids (``a#b``) of components the configs
        define (the GAN's ``generator#channels`` is not the classifier phase's business)."""
        defined: set[str] = set()
        for name in configs:
            defined |= set(json.loads((self.bundle_root / "configs" / name).read_text()))
        return {key: value for key, value in settings.items() if "#" not in key or key.split("#")[0] in defined}

    def _inputs(self, phase: Phase, weights: dict) -> dict:
        """The weights ``phase`` starts from: the classifier, and the GAN phase before it (its checkpoint for a GAN
        phase, its generator and encoder for the counterfactual encoder)."""
        inputs = {"classifier_ckpt": weights["classifier_ckpt"]} if phase.kind != "classifier" else {}
        if phase.kind == "gan" and "gan_checkpoint" in weights:
            inputs["init_ckpt"] = weights["gan_checkpoint"]
        if phase.kind == "counterfactual_encoder":
            inputs.update(generator_ckpt=weights["generator_ckpt"], encoder_ckpt=weights["encoder_ckpt"])
        return inputs

    def _train(self, kind: str, overrides: dict, prepare: Callable) -> tuple[Any, dict]:
        """One training bundle run of a ``kind`` phase, calling ``prepare(trainer, parser)`` before it runs; returns
        the trainer (its final state) and the weights it wrote."""
        attached = {}

        def prepare_trainer(parser) -> None:
            trainer = attached["trainer"] = parser.get_parsed_content("train#trainer")
            prepare(trainer, parser)

        configs = (*PHASE_KINDS[kind][0], *self.overlays)
        parser = run_bundle_workflow(self.bundle_root, configs, "train", overrides, prepare_trainer)
        models = Path(overrides["output_dir"]) / "models"
        if kind == "classifier":
            return attached["trainer"], {"classifier_ckpt": str(models / "model.pt")}
        evaluation = _plain(parser.get_parsed_content("registry_overrides"))
        if kind == "gan":
            return attached["trainer"], {
                "gan_checkpoint": latest_checkpoint(models, "gan"),
                "generator_ckpt": str(models / "generator.pt"),
                "encoder_ckpt": str(models / "encoder.pt"),
                "evaluation": evaluation,
            }
        counterfactual_encoder = str(models / "counterfactual_encoder.pt")
        return attached["trainer"], {"counterfactual_encoder_ckpt": counterfactual_encoder, "evaluation": evaluation}

    def _evaluate(self, weights: dict) -> Path:
        """The evaluation bundle on the test split (the validation split when the test split has no masks), in a new
        folder under ``evaluation/`` unless these very weights were evaluated before (``evaluation.json``: the
        weights' files and modification times); returns the folder."""
        from medxgan_monai.bundle import run_name

        fingerprint = {
            key: [value, Path(value).stat().st_mtime_ns] for key, value in weights.items() if key.endswith("_ckpt")
        }
        record_path = self.output_dir / "evaluation.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record["weights"] == fingerprint and Path(record["folder"]).is_dir():
                logger.info("these weights were evaluated before: %s", record["folder"])
                return Path(record["folder"])
        output = self.output_dir / "evaluation" / run_name("evaluation")
        section = "test" if _has_masks(self.datalist, "test") else "validation"
        # the training configs' other ids (``generator``, ``encoder``, ...) name other things in inference.json: only
        # the device and the classifier's definition, whose ids both share, carry over; the rest comes translated by
        # the last phase's ``registry_overrides``
        shared = {key: value for key, value in self.settings.items() if _shared_with_inference(key)}
        overrides = {
            **shared,
            **weights["evaluation"],
            **self.evaluation_settings,
            "datalist": str(self.datalist),
            "section": section,
            "output_dir": str(output),
            "tracking_uri": default_tracking_uri(self.output_dir / "evaluation"),
        }
        start = time.monotonic()
        run_bundle_workflow(self.bundle_root, ("inference.json", "evaluate.json", *self.overlays), "infer", overrides)
        classifier = self._evaluate_classifier(
            weights["classifier_ckpt"], section, output.with_name("classifier_" + output.name)
        )
        record = {"folder": str(output), "weights": fingerprint, "section": section, "classifier": classifier}
        record["seconds"] = round(time.monotonic() - start, 1)
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        return output

    def _evaluate_classifier(self, checkpoint: str, section: str, folder: Path) -> dict:
        """The classifier's AUC, accuracy, sensitivity and specificity on ``section`` (``evaluate_classifier.json``,
        its files in ``folder``)."""
        configs = ("train_classifier.json", "evaluate_classifier.json", *self.overlays)
        overrides = {
            **self._applicable(self.settings, configs),
            "datalist": str(self.datalist),
            "ckpt_path": checkpoint,
            "validate#section": section,
            "output_dir": str(folder.parent),
            "eval_dir": str(folder),
            "tracking_uri": default_tracking_uri(self.output_dir / "evaluation"),
        }
        attached = {}

        def keep_evaluator(parser) -> None:
            attached["evaluator"] = parser.get_parsed_content("validate#evaluator")

        run_bundle_workflow(self.bundle_root, configs, "infer", overrides, keep_evaluator)
        metrics = attached["evaluator"].state.metrics
        return {key: number for key, value in metrics.items() if (number := metric_number(value)) is not None}

    def _report(self, plan: list[dict], weights: dict, evaluation: Path | None) -> None:
        """``report.md`` and ``curves.png``: each phase's epochs (planned, run, and why fewer), wall time against the
        budget's estimate, final metrics, the curves of every epoch, the weights and the evaluation summary."""
        lines = ["# medXGAN explainer training", "", f"Datalist: `{self.datalist}`", ""]
        if self.overlays:
            lines += [f"Config overlays on every phase and the evaluation: {', '.join(self.overlays)}", ""]
        budget = self._plan_record.get("budget")  # plan.json as this run planned and re-planned it
        if budget:
            lines += [
                f"Time budget: {budget['max_minutes']:g} min for the training. Calibration "
                f"{budget['calibration_seconds']:.0f} s; every phase at {100 * budget['scale']:.1f}% of the recipe's "
                f"images; estimated training {budget['estimated_seconds']:.0f} s.",
                "",
            ]
            lines += [
                f"Re-planned before `{entry['before']}`: the phases before it took {entry['ratio']:.2f}x their "
                f"estimates; the phases left run at {100 * entry['scale']:.1f}% of the recipe's images.\n"
                for entry in budget.get("replanned", [])
            ]
        lines += ["| phase | kind | epochs planned | epochs run | seconds | estimated s | final validation metrics |"]
        lines += ["|---" * 7 + "|"]
        stops, histories = [], {}
        for planned in plan:
            record = json.loads((self.output_dir / planned["name"] / PHASE_COMPLETE).read_text())
            histories[planned["name"]] = read_history(self.output_dir / planned["name"] / HISTORY)
            metrics = ", ".join(
                f"{key} {value:.3f}" for key, value in sorted(record["metrics"].items()) if key.startswith("val_")
            )
            epochs = planned["epochs"]["train#trainer#max_epochs"]
            run = int(record["metrics"].get("epochs_run", epochs))
            seconds = f"{record['seconds']}" + (" (resumed)" if record["resumed"] else "")
            row = [planned["name"], planned["kind"], epochs, run, seconds, planned.get("estimated_seconds", "-")]
            lines.append("| " + " | ".join(map(str, [*row, metrics])) + " |")
            if record.get("stopped_early"):
                stopped = record["stopped_early"]
                values = ", ".join(f"{k} {v:.3f}" for k, v in stopped.items() if k.startswith("val_"))
                stops.append(
                    f"- `{planned['name']}`: G and D stopped after epoch {stopped['after_epoch']}: {values} reached "
                    f"the validity target {stopped['target']:g}; its encoder epochs followed."
                )
        lines += ["", "Stopped early:", "", *(stops or ["- nothing: every phase ran its planned epochs."])]
        curves = plot_training_curves(histories, self.output_dir / "curves.png")
        if curves is not None:
            lines += ["", "## Training curves", "", f"![training curves]({curves.name})"]
        lines += ["", "Weights:", ""]
        lines += [f"- `{key}`: `{value}`" for key, value in sorted(weights.items()) if key.endswith("_ckpt")]
        summary = evaluation / "summary.md" if evaluation is not None else None
        if summary is not None and summary.is_file():
            record = json.loads((self.output_dir / "evaluation.json").read_text())
            classifier = ", ".join(f"{key} {value:.3f}" for key, value in sorted(record.get("classifier", {}).items()))
            lines += ["", f"## Evaluation (`{evaluation}`, {record.get('seconds', '?')} s)", ""]
            lines += [f"Classifier on the {record.get('section', 'test')} split: {classifier or 'not measured'}.", ""]
            lines += [summary.read_text().strip()]
        atomic_write_text(self.output_dir / "report.md", "\n".join(lines) + "\n")


def run_bundle_workflow(
    bundle_root: str | os.PathLike,
    configs: Sequence[str],
    workflow_type: str,
    overrides: Mapping[str, Any],
    prepare: Callable | None = None,
):
    """Run ``configs`` (names under ``<bundle_root>/configs``) with ``overrides`` (data, never expressions:
    :func:`~medxgan_monai.bundle.config_values`), calling ``prepare(parser)`` between initialising and running;
    returns the parser (its components stay built). Errors raised inside config expressions come out unwrapped.

    Example::

        run_bundle_workflow("bundle", ["train_explainer.json"], "train", {"datalist": "data/mine/datalist.json"})
    """
    from monai.bundle import ConfigWorkflow

    bundle_root = Path(bundle_root).resolve()
    folder = bundle_root / "configs"
    workflow = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[str(folder / name) for name in configs],
        meta_file=str(folder / "metadata.json"),
        logging_file=str(folder / "logging.conf"),
        **config_values({"bundle_root": str(bundle_root), **overrides}),
    )
    try:
        workflow.initialize()
        if prepare is not None:
            prepare(workflow.parser)
        workflow.run()
    except Exception as error:
        raise unwrap_config_error(error) from None
    finally:
        workflow.finalize()
    return workflow.parser


def _phase_fields(planned: Mapping) -> dict:
    """The :class:`Phase` fields of a ``plan.json`` entry."""
    return {key: planned[key] for key in Phase.__dataclass_fields__}


def _attach_progress_bar(trainer, description: str) -> None:
    """Ignite's tqdm bar over each epoch's iterations, on a terminal only (tqdm's ``disable=None``)."""
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False, desc=description, disable=None).attach(trainer)


def _shared_with_inference(key: str) -> bool:
    return key in ("device", "seed") or key.startswith("network_def")


def _plain(values: Mapping) -> dict:
    """Parsed config values as JSON-able data (tuples and tensors of sizes as lists)."""
    return json.loads(json.dumps(dict(values), default=lambda value: list(value)))


def _has_masks(datalist: Path, section: str) -> bool:
    try:
        items = load_datalist(datalist, section)
    except Exception:  # no such section
        return False
    return any(item.get("mask") for item in items)
