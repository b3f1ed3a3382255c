"""What every explainer shares: the call shape, the target class and one post-processing convention for maps."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from monai.utils import convert_to_tensor
from torch import nn

from medxgan_monai.networks.classifier import FrozenClassifier, class_probabilities, floating

__all__ = ["SaliencyExplainer", "class_probability", "normalize_saliency"]


def normalize_saliency(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The one post-processing convention for every saliency map, before scoring or display.

    Absolute value, summed over channels, then divided by each image's maximum, so every map is (B, 1, *spatial) in
    [0, 1] with its most salient pixel at 1 (an all-zero map stays zero). Scale-free scores (pointing game, top-k IoU,
    relevance mass) are unchanged by the division; it makes maps of different methods comparable on screen.

    Example::

        maps = normalize_saliency(torch.randn(2, 1, 64, 64))   # (2, 1, 64, 64), max 1 per image
    """
    magnitude = floating(maps.detach()).abs().sum(dim=1, keepdim=True)
    peak = magnitude.flatten(1).amax(dim=1).clamp_min(eps)
    return magnitude / peak.view(-1, *([1] * (magnitude.ndim - 1)))


def class_probability(classifier: nn.Module, images: torch.Tensor, target: int = 1) -> torch.Tensor:
    """Probability of class ``target`` per image (softmax of two logits, or sigmoid of a single logit)."""
    return class_probabilities(classifier(images))[:, target]


class SaliencyExplainer(ABC):
    """Base class: ``explainer(images) -> maps``, Captum-style, on a batch of preprocessed images.

    Subclasses implement :meth:`attribute` (raw maps, any sign, shape (B, C, *spatial)); calling the explainer returns
    the maps after :func:`normalize_saliency`. The classifier is wrapped in :class:`FrozenClassifier` (eval mode, no
    weight gradients); gradients are enabled inside the call even when the caller runs under ``torch.no_grad()``.

    Args:
        classifier: a network returning logits (B, 2) or (B, 1).
        target: the class whose evidence is explained (1, the positive class, by default).

    Example::

        explainer = InputGradientExplainer(classifier)
        maps = explainer(images)          # (B, 1, H, W) in [0, 1]
    """

    #: the method's name in output files (``<stem>_<name>.nii.gz``)
    name: str = "saliency"

    def __init__(self, classifier: nn.Module, target: int = 1) -> None:
        self.classifier = FrozenClassifier.wrap(classifier)
        self.target = target

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = convert_to_tensor(images, track_meta=False)
        with torch.enable_grad():
            return normalize_saliency(self.attribute(images))

    @abstractmethod
    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        """Raw attribution maps (B, C, *spatial) for ``images`` (B, C, *spatial)."""
