"""Explainers: medXGAN (inversion, counterfactual, difference map, latent-path IG, sweep) and the baselines."""

from medxgan_monai.explain.base import SaliencyExplainer, class_probability, normalize_saliency
from medxgan_monai.explain.baselines import (
    GradCAMExplainer,
    InputGradientExplainer,
    IntegratedGradientsExplainer,
    OcclusionExplainer,
)
from medxgan_monai.explain.latent_shift import LatentShiftExplainer
from medxgan_monai.explain.medxgan import (
    CounterfactualRefiner,
    Explanation,
    LatentInverter,
    MedXGANExplainer,
    interpolation_sweep,
    latent_path_integrated_gradients,
)

__all__ = [
    "CounterfactualRefiner",
    "Explanation",
    "GradCAMExplainer",
    "InputGradientExplainer",
    "IntegratedGradientsExplainer",
    "LatentInverter",
    "LatentShiftExplainer",
    "MedXGANExplainer",
    "OcclusionExplainer",
    "SaliencyExplainer",
    "class_probability",
    "interpolation_sweep",
    "latent_path_integrated_gradients",
    "normalize_saliency",
]
