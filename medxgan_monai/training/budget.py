"""Fit the training recipe into a time budget: measure what an iteration and an epoch cost on this machine and this
datalist, then shorten every phase by one common factor until the plan fits.

A phase of kind ``k`` that runs ``E`` epochs of ``I`` iterations costs, in this model::

    fixed[k] + sum over its epochs of (I * iteration[stage] + epoch_overhead[k])

where ``fixed`` is the bundle run's start (parsing, building the networks, caching the datalist) and end, ``iteration``
the seconds of one training iteration of the epoch's stage (a GAN phase has two stages, G and D, then the encoder),
and ``epoch_overhead`` what each epoch adds (validation, checkpoints, sample grids). :class:`Calibration` measures the
three with one short bundle run per kind of phase (a few iterations per stage, every other cost as in a real phase),
chained like the real phases: the classifier run's weights feed the GAN run, whose weights feed the counterfactual
encoder run. :func:`fit_to_budget` then picks the largest scale in (0, 1] of every phase's images that fits; the
shortest plan is one epoch per stage, and a budget below it is refused with the time it would need
(:class:`BudgetError`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from medxgan_monai.handlers._ignite import Engine, Events

__all__ = [
    "BudgetError",
    "CallsEveryImage",
    "Calibration",
    "EpochStopwatch",
    "fit_to_budget",
    "phase_seconds",
    "scaled",
]

#: the part of the budget the plan may fill; the rest absorbs the model's error: a calibration of 8 iterations per
#: stage under-estimated the GAN epochs of a 30-minute run on 2,000 images by about 15% (2 CPU cores)
PLANNED_SHARE = 0.8
#: the share of the planned time the classifier phase may keep before it is shortened like the others: everything
#: after it explains that classifier, and a classifier epoch costs a small part of a GAN epoch (about 1/20 at 32^3,
#: 1/15 at 64 px on 2 CPU cores), so one factor for every phase starved it (a 30-minute run on the faint set: five
#: epochs, test AUC 0.55)
CLASSIFIER_SHARE = 0.25


class CallsEveryImage(torch.nn.Module):
    """``classifier`` with its ``target`` logit raised so far that it calls every image ``target``, at the same cost:
    the counterfactual encoder phase trains on the images the classifier calls positive, so its calibration (before
    any real classifier exists) measures the most it can cost."""

    def __init__(self, classifier: torch.nn.Module, target: int) -> None:
        super().__init__()
        self.classifier, self.target = classifier, target

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images)
        if logits.shape[1] == 1:  # one logit: the sigmoid's probability of class 1
            return logits + (30.0 if self.target == 1 else -30.0)
        shift = torch.zeros_like(logits[:1])
        shift[:, self.target] = 30.0
        return logits + shift


class BudgetError(ValueError):
    """The time budget cannot hold even the shortest plan."""


@dataclass
class EpochStopwatch:
    """Record, for each epoch of an engine, how many iterations ran, the seconds per iteration (from the first
    iteration's end to the last's, so the data loader's start is not counted) and the seconds from the last
    iteration's end to the next epoch's start or the run's end (the epoch's validation, checkpoints and other
    epoch-end work).

    Example::

        stopwatch = EpochStopwatch()
        stopwatch.attach(trainer)
        trainer.run()
        stopwatch.epochs  # [{"epoch": 1, "iterations": 8, "iteration_seconds": 0.41, "overhead_seconds": 3.2}]
    """

    epochs: list[dict] = field(default_factory=list)

    def attach(self, engine: Engine) -> None:
        self._ends: list[float] = []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: self._ends.append(time.perf_counter()))
        engine.add_event_handler(Events.EPOCH_STARTED, self._close_epoch)
        # the run's last epoch closes after every other handler of the run's end (registered before this one)
        engine.add_event_handler(Events.COMPLETED, self._close_epoch)

    def _close_epoch(self, engine: Engine) -> None:
        if not self._ends:
            return
        ends, self._ends = self._ends, []
        per_iteration = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else math.nan
        self.epochs.append(
            {
                "epoch": len(self.epochs) + 1,
                "iterations": len(ends),
                "iteration_seconds": per_iteration,
                "overhead_seconds": time.perf_counter() - ends[-1],
            }
        )


@dataclass
class Calibration:
    """What a phase costs on this machine and datalist, per kind of phase (``classifier``, ``gan``,
    ``counterfactual_encoder``) and per stage (those kinds, and ``encoder``: a GAN phase's encoder epochs).

    Attributes:
        iteration: seconds per training iteration, per stage.
        epoch_overhead: seconds each epoch adds to its iterations, per kind.
        fixed: seconds of a bundle run besides its epochs, per kind.
        iterations_per_epoch: a full epoch's iterations over the training images, per kind (its batch size).
        seconds: the calibration's own wall time.
    """

    iteration: dict[str, float] = field(default_factory=dict)
    epoch_overhead: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)
    iterations_per_epoch: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, kind: str, wall_seconds: float, epochs: Sequence[dict], iterations_per_epoch: int) -> None:
        """Add one calibration run of ``kind``: its wall time and its :class:`EpochStopwatch` epochs (a GAN run:
        one epoch of G and D, then one of the encoder)."""
        stages = ("gan", "encoder") if kind == "gan" else (kind,)
        if len(epochs) != len(stages) or any(epoch["iterations"] < 2 for epoch in epochs):
            raise BudgetError(
                f"the {kind} calibration run gave {len(epochs)} epoch(s) of "
                f"{[epoch['iterations'] for epoch in epochs]} iteration(s); it needs {len(stages)} of at least 2 "
                "(are there at least two batches of training images?)"
            )
        for stage, epoch in zip(stages, epochs, strict=True):
            self.iteration[stage] = epoch["iteration_seconds"]
        self.epoch_overhead[kind] = sum(epoch["overhead_seconds"] for epoch in epochs) / len(epochs)
        spent = sum(epoch["iterations"] * epoch["iteration_seconds"] + epoch["overhead_seconds"] for epoch in epochs)
        self.fixed[kind] = max(0.0, wall_seconds - spent)
        self.iterations_per_epoch[kind] = iterations_per_epoch

    def scaled(self, ratio: float) -> Calibration:
        """Every time times ``ratio`` (the phases run so far took ``ratio`` times their estimates)."""
        return Calibration(
            iteration={key: value * ratio for key, value in self.iteration.items()},
            epoch_overhead={key: value * ratio for key, value in self.epoch_overhead.items()},
            fixed={key: value * ratio for key, value in self.fixed.items()},
            iterations_per_epoch=dict(self.iterations_per_epoch),
            seconds=self.seconds,
        )

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, record: Mapping) -> Calibration:
        return cls(**{key: record[key] for key in cls.__dataclass_fields__})


def phase_seconds(phase, training_images: int, calibration: Calibration) -> float:
    """The seconds ``phase`` (a :class:`~medxgan_monai.training.Phase`) should take on ``training_images``."""
    epochs = phase.epochs(training_images)
    iterations = calibration.iterations_per_epoch[phase.kind]
    overhead = calibration.epoch_overhead[phase.kind]
    if phase.kind == "gan":
        gan_epochs = epochs["train#trainer#gan_stop_epoch"] - 1
        stages = {"gan": gan_epochs, "encoder": epochs["train#trainer#max_epochs"] - gan_epochs}
    else:
        stages = {phase.kind: epochs["train#trainer#max_epochs"]}
    per_epoch = {stage: iterations * calibration.iteration[stage] + overhead for stage in stages}
    return calibration.fixed[phase.kind] + sum(count * per_epoch[stage] for stage, count in stages.items())


def scaled(phase, scale: float):
    """``phase`` with each of its lengths times ``scale`` (a length that was not 0 stays at least 1 image)."""
    lengths = {
        name: max(1, round(getattr(phase, name) * scale)) if getattr(phase, name) else 0
        for name in ("images", "gan_images", "encoder_images")
    }
    return replace(phase, **lengths)


def fit_to_budget(
    phases: Sequence,
    training_images: int,
    calibration: Calibration,
    seconds: float,
    describe: Callable[[float], str] = lambda s: f"{s / 60:.1f} min",
) -> tuple[float, list]:
    """The largest scale in (0, 1] of the phases' images whose plan fits :data:`PLANNED_SHARE` of ``seconds``, and
    the scaled phases. Classifier first: the classifier phase is scaled by the larger of that scale and the largest
    that keeps it within :data:`CLASSIFIER_SHARE` of the planned time (its whole length when that fits).

    Raises:
        BudgetError: even one epoch per stage of every phase does not fit.
    """

    def cost(phase, scale: float) -> float:
        return phase_seconds(scaled(phase, scale), training_images, calibration)

    room = PLANNED_SHARE * seconds
    if sum(cost(phase, 1.0) for phase in phases) <= room:
        return 1.0, list(phases)
    shortest = sum(cost(phase, 0.0) for phase in phases)
    if shortest > room:
        raise BudgetError(
            f"the time budget is too small to train anything: after the calibration, {describe(max(seconds, 0))} "
            f"are left, and the shortest plan (one epoch per stage of each of the {len(phases)} phases, on "
            f"{training_images} training images) needs about {describe(shortest / PLANNED_SHARE)} on this machine; "
            "give a larger budget, or fewer or smaller training images"
        )
    classifier_scale = max(
        (_largest_scale(lambda s, p=phase: cost(p, s), CLASSIFIER_SHARE * room) for phase in phases if _first(phase)),
        default=0.0,
    )

    def plan(scale: float) -> list:
        return [scaled(phase, max(scale, classifier_scale) if _first(phase) else scale) for phase in phases]

    def total(scale: float) -> float:
        return sum(phase_seconds(phase, training_images, calibration) for phase in plan(scale))

    if total(0.0) > room:  # the classifier's share leaves too little: one factor for all, as the shortest plan fits
        classifier_scale = 0.0
    scale = _largest_scale(total, room)
    return scale, plan(scale)


def _first(phase) -> bool:
    """Whether ``phase`` is trained first and kept long (:data:`CLASSIFIER_SHARE`): the classifier."""
    return phase.kind == "classifier"


def _largest_scale(cost: Callable[[float], float], room: float) -> float:
    """The largest scale in [0, 1] whose ``cost`` (increasing with the scale) is at most ``room`` (0 when none)."""
    if cost(1.0) <= room:
        return 1.0
    low, high = 0.0, 1.0  # cost(high) does not fit; cost(low) fits or low is 0
    while high - low > 1e-4:
        middle = (low + high) / 2
        low, high = (middle, high) if cost(middle) <= room else (low, middle)
    return low
