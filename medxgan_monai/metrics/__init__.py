"""Explanation metrics: localization against ground-truth masks, faithfulness to the classifier, counterfactual
validity, the randomization sanity test, and bootstrap confidence intervals."""

from medxgan_monai.metrics.counterfactual import counterfactual_validity
from medxgan_monai.metrics.faithfulness import PerturbationCurves, deletion_insertion
from medxgan_monai.metrics.localization import otsu_iou, pixel_auroc, pointing_game, relevance_mass, top_k_iou
from medxgan_monai.metrics.sanity import cascading_randomization, randomization_layers, rank_correlation
from medxgan_monai.metrics.statistics import bootstrap_ci, summarize

__all__ = [
    "PerturbationCurves",
    "bootstrap_ci",
    "cascading_randomization",
    "counterfactual_validity",
    "deletion_insertion",
    "otsu_iou",
    "pixel_auroc",
    "pointing_game",
    "randomization_layers",
    "rank_correlation",
    "relevance_mass",
    "summarize",
    "top_k_iou",
]
