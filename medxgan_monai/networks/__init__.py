"""Networks: the medXGAN generator, discriminator and encoder, and the frozen-classifier wrapper."""

from medxgan_monai.networks.classifier import FrozenClassifier
from medxgan_monai.networks.medxgan import MedXGANDiscriminator, MedXGANEncoder, MedXGANGenerator, pathology_codes

__all__ = ["FrozenClassifier", "MedXGANDiscriminator", "MedXGANEncoder", "MedXGANGenerator", "pathology_codes"]
