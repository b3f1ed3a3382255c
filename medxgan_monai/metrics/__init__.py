"""Explanation metrics: localization against ground-truth masks, faithfulness to the classifier (deletion, insertion,
ROAD), counterfactual validity, complexity of the maps, the randomization sanity test, and bootstrap confidence
intervals; :data:`METRICS` is the one table of per-image metrics and :func:`score_maps` scores a method's maps with
it."""

from medxgan_monai.metrics.complexity import entropy, sparseness
from medxgan_monai.metrics.counterfactual import counterfactual_validity
from medxgan_monai.metrics.faithfulness import (
    FILLS,
    ROAD_PERCENTAGES,
    PerturbationCurves,
    ROADCurves,
    deletion_insertion,
    noisy_linear_imputation,
    road,
)
from medxgan_monai.metrics.localization import otsu_iou, pixel_auroc, pointing_game, relevance_mass, top_k_iou
from medxgan_monai.metrics.sanity import cascading_randomization, randomization_layers, rank_correlation
from medxgan_monai.metrics.statistics import bootstrap_ci, paired_bootstrap, paired_comparisons, summarize
from medxgan_monai.metrics.table import METRICS, NEEDS, ExplanationMetric, MetricInputs, metric_table, score_maps

__all__ = [
    "FILLS",
    "METRICS",
    "NEEDS",
    "ROAD_PERCENTAGES",
    "ExplanationMetric",
    "MetricInputs",
    "PerturbationCurves",
    "ROADCurves",
    "bootstrap_ci",
    "cascading_randomization",
    "counterfactual_validity",
    "deletion_insertion",
    "entropy",
    "metric_table",
    "noisy_linear_imputation",
    "otsu_iou",
    "paired_bootstrap",
    "paired_comparisons",
    "pixel_auroc",
    "pointing_game",
    "randomization_layers",
    "rank_correlation",
    "relevance_mass",
    "road",
    "score_maps",
    "sparseness",
    "summarize",
    "top_k_iou",
]
