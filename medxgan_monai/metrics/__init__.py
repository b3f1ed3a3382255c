"""Explanation metrics: localization against ground-truth masks."""

from medxgan_monai.metrics.localization import pointing_game, relevance_mass, top_k_iou

__all__ = ["pointing_game", "relevance_mass", "top_k_iou"]
