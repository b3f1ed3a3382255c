"""Explanation metrics: localization against ground-truth masks, faithfulness to the classifier, counterfactual
validity, the randomization sanity test, and bootstrap confidence intervals; :data:`METRICS` is the one table of
per-image metrics and :func:`score_maps` scores a method's maps with it."""

from medxgan_monai.metrics.counterfactual import counterfactual_validity
from medxgan_monai.metrics.faithfulness import PerturbationCurves, deletion_insertion
from medxgan_monai.metrics.localization import otsu_iou, pixel_auroc, pointing_game, relevance_mass, top_k_iou
from medxgan_monai.metrics.sanity import cascading_randomization, randomization_layers, rank_correlation
from medxgan_monai.metrics.statistics import bootstrap_ci, paired_bootstrap, paired_comparisons, summarize
from medxgan_monai.metrics.table import METRICS, NEEDS, ExplanationMetric, MetricInputs, metric_table, score_maps

__all__ = [
    "METRICS",
    "NEEDS",
    "ExplanationMetric",
    "MetricInputs",
    "PerturbationCurves",
    "bootstrap_ci",
    "cascading_randomization",
    "counterfactual_validity",
    "deletion_insertion",
    "metric_table",
    "otsu_iou",
    "paired_bootstrap",
    "paired_comparisons",
    "pixel_auroc",
    "pointing_game",
    "randomization_layers",
    "rank_correlation",
    "relevance_mass",
    "score_maps",
    "summarize",
    "top_k_iou",
]
