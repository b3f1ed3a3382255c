"""Amortised counterfactual refinement: an encoder trained to predict where the refinement of the default map ends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.utils import StrEnum, min_version, optional_import
from torch import nn
from torch.optim import Optimizer

from medxgan_monai.explain.base import class_probability
from medxgan_monai.explain.medxgan import CounterfactualRefiner, RefinementStep
from medxgan_monai.networks.classifier import freeze

if TYPE_CHECKING:
    from ignite.engine import Engine
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")
    Metric, _ = optional_import("ignite.metrics", "0.4.11", min_version, "Metric")

__all__ = ["CounterfactualEncoderKeys", "CounterfactualEncoderTrainer", "amortised_refinement_step"]


class CounterfactualEncoderKeys(StrEnum):
    """Keys of the trainer's per-iteration output (NaN in an iteration without a called-positive image)."""

    LOSS = "cf_loss"
    VALIDITY = "cf_validity"
    CHANGE = "cf_change"
    POSITIVES = "cf_positives"


def amortised_refinement_step(
    refiner: CounterfactualRefiner,
    encoder: nn.Module,
    counterfactual_encoder: nn.Module,
    images: torch.Tensor,
) -> RefinementStep | None:
    """The refinement objective (:meth:`CounterfactualRefiner.objective`) of the codes ``counterfactual_encoder``
    predicts for the images the classifier calls ``refiner.target`` (the ones whose counterfactual must flip it), or
    ``None`` when there is none. The reconstruction comes from ``encoder``'s codes, as at explanation time."""
    with torch.no_grad():
        positive = class_probability(refiner.classifier, images, refiner.target) >= 0.5
    if not positive.any():
        return None
    images = images[positive]
    with torch.no_grad():
        reconstruction = refiner.generator(*encoder(images))
    anatomy, pathology = counterfactual_encoder(images)
    return refiner.objective(images, reconstruction, anatomy, pathology)


class CounterfactualEncoderTrainer(Trainer):
    """Train a counterfactual encoder E' so that the refinement of the default map needs only a few steps.

    The default map (``medxgan_ig``) refines, per image x, the codes (z_a', z_p') of its residual counterfactual
    ``x - (G(E(x)) - G(z_a', z_p'))`` with Adam against :meth:`CounterfactualRefiner.objective` (flip the classifier,
    change as little as possible), 50 steps from (z_a, 0). This trainer fits E' (an encoder of the same architecture,
    usually initialised from E) to minimise that same objective at (z_a', z_p') = E'(x) over the training images the
    classifier calls positive, so that at explanation time the refinement starts where it would otherwise end:
    amortised optimisation, like the amortised inversion of the encoder itself. G, E and the classifier are frozen.

    The output of each iteration is a dict of floats keyed by :class:`CounterfactualEncoderKeys`: the mean
    objective, the fraction of valid (flipped) unrefined counterfactuals, the mean |change| and the number of
    called-positive images in the batch.

    Args:
        device: where to train.
        max_epochs: epochs to run.
        train_data_loader: yields dicts with ``image``.
        network, optimizer: the counterfactual encoder E' and its optimizer.
        generator, encoder, classifier: the frozen medXGAN generator and encoder, and the explained classifier.
        sparsity_weight, smoothing: the refinement objective's (use the inference bundle's values).
        target: the explained class.

    Example::

        trainer = CounterfactualEncoderTrainer(device, 10, loader, e_prime, optimizer, g_ema, encoder, classifier)
        trainer.run()
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        generator: nn.Module,
        encoder: nn.Module,
        classifier: nn.Module,
        sparsity_weight: float = 100.0,
        smoothing: float = 1e-3,
        target: int = 1,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=torch.device(device),
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            decollate=False,
            **kwargs,
        )
        self.network, self.optimizer = network, optimizer
        self.encoder = freeze(encoder)
        self.refiner = CounterfactualRefiner(
            generator,
            classifier,
            steps=0,
            sparsity_weight=sparsity_weight,
            smoothing=smoothing,
            target=target,
        )

    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> dict[str, float]:
        images, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        step = amortised_refinement_step(self.refiner, self.encoder, self.network, images.float())
        if step is None:
            return {key: float("nan") for key in CounterfactualEncoderKeys} | {CounterfactualEncoderKeys.POSITIVES: 0.0}
        loss = step.loss.mean()
        loss.backward()
        self.optimizer.step()
        return {
            CounterfactualEncoderKeys.LOSS: loss.item(),
            CounterfactualEncoderKeys.VALIDITY: (step.probability < 0.5).float().mean().item(),
            CounterfactualEncoderKeys.CHANGE: step.sparsity.mean().item(),
            CounterfactualEncoderKeys.POSITIVES: float(step.loss.shape[0]),
        }
