"""Explanation methods: medXGAN (difference map, latent-path IG, IG from the residual counterfactual) and the
baselines, one :class:`Attribution` result, and the registry every consumer reads (:data:`METHODS`,
:class:`Explainers`)."""

from medxgan_monai.explain.base import Attribution, SaliencyExplainer, Sweep, class_probability, normalize_saliency
from medxgan_monai.explain.baselines import (
    GradCAMExplainer,
    GradCAMPlusPlusExplainer,
    InputGradientExplainer,
    IntegratedGradientsExplainer,
    OcclusionExplainer,
    SmoothGradExplainer,
)
from medxgan_monai.explain.latent_shift import LatentShiftExplainer
from medxgan_monai.explain.medxgan import (
    CounterfactualRefiner,
    LatentInverter,
    MedXGANDifference,
    MedXGANIntegratedGradients,
    MedXGANLatentIntegratedGradients,
    interpolation_sweep,
    latent_path_integrated_gradients,
)
from medxgan_monai.explain.registry import (
    INVERSION,
    METHODS,
    Explainers,
    Method,
    counterfactual_names,
    counterfactuals_by_name,
    method_names,
)

__all__ = [
    "INVERSION",
    "METHODS",
    "Attribution",
    "CounterfactualRefiner",
    "Explainers",
    "GradCAMExplainer",
    "GradCAMPlusPlusExplainer",
    "InputGradientExplainer",
    "IntegratedGradientsExplainer",
    "LatentInverter",
    "LatentShiftExplainer",
    "MedXGANDifference",
    "MedXGANIntegratedGradients",
    "MedXGANLatentIntegratedGradients",
    "Method",
    "OcclusionExplainer",
    "SaliencyExplainer",
    "SmoothGradExplainer",
    "Sweep",
    "class_probability",
    "counterfactual_names",
    "counterfactuals_by_name",
    "interpolation_sweep",
    "latent_path_integrated_gradients",
    "method_names",
    "normalize_saliency",
]
