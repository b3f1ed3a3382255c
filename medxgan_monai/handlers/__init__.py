"""Ignite handlers used by the bundle configs."""

from medxgan_monai.handlers.confusion import ConfusionMatrixSaver

__all__ = ["ConfusionMatrixSaver"]
