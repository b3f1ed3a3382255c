"""Explanation metrics: localization against ground-truth masks, and bootstrap confidence intervals."""

from medxgan_monai.metrics.localization import pointing_game, relevance_mass, top_k_iou
from medxgan_monai.metrics.statistics import bootstrap_ci

__all__ = ["bootstrap_ci", "pointing_game", "relevance_mass", "top_k_iou"]
