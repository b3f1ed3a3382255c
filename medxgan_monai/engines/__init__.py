"""Engines: the classifier-guided medXGAN trainer."""

from medxgan_monai.engines.medxgan_trainer import (
    MedXGANKeys,
    MedXGANTrainer,
    discriminator_loss,
    ema_copy,
    generator_adversarial_loss,
    output_averages,
)

__all__ = [
    "MedXGANKeys",
    "MedXGANTrainer",
    "discriminator_loss",
    "ema_copy",
    "generator_adversarial_loss",
    "output_averages",
]
