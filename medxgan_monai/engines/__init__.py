"""Engines: the classifier-guided medXGAN trainer and the counterfactual encoder trainer."""

from medxgan_monai.engines.counterfactual_encoder_trainer import (
    CounterfactualEncoderKeys,
    CounterfactualEncoderTrainer,
    amortised_refinement_step,
)
from medxgan_monai.engines.medxgan_trainer import (
    MedXGANKeys,
    MedXGANTrainer,
    discriminator_loss,
    ema_copy,
    generator_adversarial_loss,
    output_averages,
)

__all__ = [
    "CounterfactualEncoderKeys",
    "CounterfactualEncoderTrainer",
    "MedXGANKeys",
    "MedXGANTrainer",
    "amortised_refinement_step",
    "discriminator_loss",
    "ema_copy",
    "generator_adversarial_loss",
    "output_averages",
]
