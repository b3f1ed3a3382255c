"""medxgan-monai: a binary medical-image classifier and a medXGAN explainer for it, as a MONAI bundle."""

__version__ = "0.1.0"
