"""medxgan-monai: a binary medical-image classifier and a medXGAN explainer for it, as a MONAI bundle."""

__version__ = "0.5.0"

from medxgan_monai import bundle, data, deploy, engines, explain, handlers, io, metrics, networks, transforms  # noqa: E402  (configs use medxgan_monai.<module>)

__all__ = [
    "__version__",
    "bundle",
    "data",
    "deploy",
    "engines",
    "explain",
    "handlers",
    "io",
    "metrics",
    "networks",
    "transforms",
]
