"""End a GAN phase's generator training once its counterfactuals are valid (:mod:`medxgan_monai.training`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from medxgan_monai.handlers._ignite import Engine, Events

__all__ = ["ValidityStop"]

logger = logging.getLogger("medxgan_monai.training")

#: the validation metrics that must all reach the target: G(z_a, 0) called negative, G(z_a, z_p) called positive
VALIDITY_METRICS = ("val_cf_validity_negative", "val_cf_validity_positive")


@dataclass
class ValidityStop:
    """Stop training G and D (a :class:`~medxgan_monai.engines.MedXGANTrainer`) as soon as the validation says the
    generated counterfactuals are valid both ways at ``target`` or more: a phase with encoder epochs after its GAN
    epochs goes on to them at once (the epochs it saved are dropped, not given to the encoder), a phase without ends.

    The check runs when the next epoch starts, on the validation of the epoch before (the phase's validator writes its
    metrics after this handler's epoch-end handlers would run).

    Args:
        target: the validity each of :data:`VALIDITY_METRICS` must reach, in (0, 1].
        metrics: the metrics checked.

    Attributes:
        stopped: once G and D stopped early, the epoch after which they did and the metrics that made them stop (the
            training report says what was stopped and why); else ``None``.

    Example::

        ValidityStop(0.95).attach(trainer)
    """

    target: float
    metrics: Sequence[str] = VALIDITY_METRICS

    stopped: dict | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"the validity target must be in (0, 1], not {self.target}")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch, stop = engine.state.epoch, engine.gan_stop_epoch  # the epoch about to run, G's first frozen epoch
        training_gan = stop is None or epoch < stop
        values = [engine.state.metrics.get(name) for name in self.metrics]
        if epoch == 1 or not training_gan or any(v is None or not v >= self.target for v in values):
            return
        encoder_epochs = engine.state.max_epochs - (stop - 1) if stop is not None else 0
        shown = ", ".join(f"{name} {value:.3f}" for name, value in zip(self.metrics, values, strict=True))
        self.stopped = {"after_epoch": epoch - 1, "target": self.target, **dict(zip(self.metrics, values, strict=True))}
        if encoder_epochs <= 0:
            logger.info("counterfactuals valid after epoch %d (%s >= %g): phase ends", epoch - 1, shown, self.target)
            engine.terminate()
            return
        logger.info(
            "counterfactuals valid after epoch %d (%s >= %g): G and D stop, %d encoder epoch(s) follow",
            epoch - 1,
            shown,
            self.target,
            encoder_epochs,
        )
        engine.gan_stop_epoch = epoch
        engine.encoder_start_epoch = min(engine.encoder_start_epoch, epoch)
        engine.state.max_epochs = epoch - 1 + encoder_epochs
