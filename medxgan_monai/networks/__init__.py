"""Networks: the medXGAN generator, discriminator and encoder, and the frozen-classifier wrapper."""

from medxgan_monai.networks.classifier import (
    FrozenClassifier,
    class_log_probabilities,
    class_probabilities,
    floating,
    freeze,
)
from medxgan_monai.networks.medxgan import MedXGANDiscriminator, MedXGANEncoder, MedXGANGenerator, pathology_codes

__all__ = [
    "FrozenClassifier",
    "MedXGANDiscriminator",
    "MedXGANEncoder",
    "MedXGANGenerator",
    "class_log_probabilities",
    "class_probabilities",
    "floating",
    "freeze",
    "pathology_codes",
]
