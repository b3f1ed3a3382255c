"""medxgan-monai: a binary medical-image classifier and a medXGAN explainer for it, as a MONAI bundle."""

import importlib

__version__ = "0.12.0"

#: subpackages reachable as attributes after ``import medxgan_monai`` (the configs write
#: ``$medxgan_monai.bundle.run_name(...)``); each is imported on first access, so importing the package alone loads
#: neither MONAI nor MLflow nor pandas (PEP 562)
_SUBPACKAGES = (
    "bundle",
    "data",
    "deploy",
    "engines",
    "explain",
    "handlers",
    "io",
    "metrics",
    "networks",
    "training",
    "transforms",
)

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds it here, so this runs once per name
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES})
