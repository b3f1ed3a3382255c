"""Validation of a counterfactual encoder (amortised refinement of the default map), as an Ignite handler."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from medxgan_monai.engines.counterfactual_encoder_trainer import amortised_refinement_step
from medxgan_monai.explain.medxgan import CounterfactualRefiner
from medxgan_monai.handlers._ignite import Engine, Events

__all__ = ["CounterfactualEncoderValidator"]

logger = logging.getLogger(__name__)


class CounterfactualEncoderValidator:
    """Score a counterfactual encoder E' on held-out images; store the results in the engine's metrics.

    Over the validation images the classifier calls positive, with the unrefined residual counterfactual of the
    codes E'(x) (what the default map's few refinement steps start from): ``cf_objective``, the mean refinement
    objective (lower is better: select the best epoch by it), ``cf_validity``, the fraction the classifier calls
    negative, and ``cf_change``, the mean |change| (prefixed with ``prefix``).

    Example (config)::

        {"_target_": "medxgan_monai.handlers.CounterfactualEncoderValidator", "refiner": "$@train#trainer.refiner",
         "encoder": "@frozen_encoder", "counterfactual_encoder": "@cf_network",
         "val_data_loader": "@validate#dataloader"}
    """

    def __init__(
        self,
        refiner: CounterfactualRefiner,
        encoder: nn.Module,
        counterfactual_encoder: nn.Module,
        val_data_loader: Iterable,
        interval: int = 1,
        prefix: str = "val_",
    ) -> None:
        self.refiner = refiner
        self.encoder = encoder
        self.counterfactual_encoder = counterfactual_encoder
        self.val_data_loader = val_data_loader
        self.interval = interval
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        metrics = self.compute(engine.state.device)
        engine.state.metrics.update(metrics)
        logger.info(
            "epoch %d counterfactual encoder validation: %s",
            engine.state.epoch,
            " ".join(f"{key}: {value:.4f}" for key, value in metrics.items()),
        )

    @torch.no_grad()
    def compute(self, device: torch.device | str = "cpu") -> dict[str, float]:
        training = self.counterfactual_encoder.training
        self.counterfactual_encoder.eval()
        losses, valid, change = [], [], []
        try:
            for batch in self.val_data_loader:
                images = batch["image"].to(device).float()
                step = amortised_refinement_step(self.refiner, self.encoder, self.counterfactual_encoder, images)
                if step is not None:
                    losses.append(step.loss)
                    valid.append(step.probability < 0.5)
                    change.append(step.sparsity)
        finally:
            self.counterfactual_encoder.train(training)
        if not losses:
            nan = float("nan")
            logger.warning("counterfactual encoder validation: the classifier calls no validation image positive")
            return {f"{self.prefix}cf_objective": nan, f"{self.prefix}cf_validity": nan, f"{self.prefix}cf_change": nan}
        return {
            f"{self.prefix}cf_objective": torch.cat(losses).mean().item(),
            f"{self.prefix}cf_validity": torch.cat(valid).float().mean().item(),
            f"{self.prefix}cf_change": torch.cat(change).mean().item(),
        }
