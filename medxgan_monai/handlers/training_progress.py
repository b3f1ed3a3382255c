"""A progress line a person can read for each epoch of a training plan (:mod:`medxgan_monai.training`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from medxgan_monai.handlers._ignite import Engine, Events

__all__ = ["PlanProgress", "metric_number"]

logger = logging.getLogger("medxgan_monai.training")


@dataclass
class PlanProgress:
    """Log one line per epoch of one phase of a plan: the phase and epoch, the training losses and every validation
    metric (``val_*``: counterfactual validity both ways, inversion PSNR, FD, AUC, ... as the phase computes them),
    the time spent and an estimate of the time the whole plan still needs.

    Progress is counted in the plan's images (a phase of E epochs planned as N images has done N e / E after epoch e);
    the estimate is the plan's images left at the rate this process has gone so far. The phases differ in cost per
    image, so it settles once a phase of each kind has run.

    The line of epoch ``e`` is written when epoch ``e + 1`` starts (and when the phase completes), so that it holds the
    validation of epoch ``e``, which the phase's validators add after this handler's own epoch-end handlers would run.

    Args:
        phase: the phase's name.
        index, count: the phase's number (1-based) and the number of phases.
        phase_images: the images planned for this phase.
        images_left: the images the plan has left when this phase starts, this whole phase included.
        started: when the plan started in this process (``time.monotonic()``).
        images_done: the plan's images done in this process before this phase.
        history_file: where each epoch's line is also appended as one JSON object (epoch, every number shown,
            seconds spent), for the training report's curves; ``None``: nowhere.

    Example::

        PlanProgress("gan", 2, 5, 120_000, images_left=390_000, started=time.monotonic()).attach(trainer)
    """

    phase: str
    index: int
    count: int
    phase_images: int
    images_left: int
    started: float
    images_done: float = 0.0
    history_file: Path | None = None

    def attach(self, engine: Engine, *validators: Engine) -> None:
        """Report on ``engine``'s epochs, with its metrics and those of ``validators`` (engines that validate it
        and keep their own metrics, as the classifier's evaluator does)."""
        self._first_epoch: int | None = None
        self._validators = validators
        engine.add_event_handler(Events.EPOCH_STARTED, self._report_previous)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def done(self, engine: Engine) -> float:
        """The plan's images this phase has done in this process."""
        if self._first_epoch is None:
            return 0.0
        return self.phase_images / max(engine.state.max_epochs, 1) * (engine.state.epoch - self._first_epoch)

    def metrics(self, engine: Engine) -> dict:
        """``engine``'s metrics and its validators'."""
        metrics = dict(engine.state.metrics)
        for validator in self._validators:
            metrics.update(validator.state.metrics)
        return metrics

    def _report_previous(self, engine: Engine) -> None:
        if self._first_epoch is None:  # this phase's first epoch in this process (a resumed one starts later)
            self._first_epoch = engine.state.epoch - 1
            return
        self._report(engine, engine.state.epoch - 1)

    def _report(self, engine: Engine, epoch: int | None = None) -> None:
        epoch = engine.state.epoch if epoch is None else epoch
        numbers = {key: metric_number(value) for key, value in sorted(self.metrics(engine).items())}
        shown = [f"{key} {number:.3f}" for key, number in numbers.items() if number is not None]
        per_epoch = self.phase_images / max(engine.state.max_epochs, 1)
        left = max(0.0, self.images_left - per_epoch * epoch)
        done = self.images_done + per_epoch * (epoch - (self._first_epoch or 0))
        elapsed = time.monotonic() - self.started
        if self.history_file is not None:
            numbers = {key: number for key, number in numbers.items() if number is not None and number == number}
            line = {"epoch": epoch, "max_epochs": engine.state.max_epochs, "seconds": round(elapsed, 1), **numbers}
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.history_file, "a") as history:
                history.write(json.dumps(line) + "\n")
        logger.info(
            "phase %d/%d %s, epoch %d/%d: %s | %s spent, about %s left for the plan",
            self.index,
            self.count,
            self.phase,
            epoch,
            engine.state.max_epochs,
            ", ".join(shown) or "no metrics",
            _clock(elapsed),
            _clock(elapsed / done * left) if done > 0 else "an unknown time",
        )


def metric_number(value) -> float | None:
    """A metric value as a float (Python and NumPy numbers, one-element tensors; NaN stays: a metric without data,
    e.g. counterfactual validity before the classifier calls any image positive), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
