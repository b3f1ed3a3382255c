"""What every explainer shares: the call shape, the target class and one post-processing convention for maps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from monai.utils import convert_to_tensor
from torch import nn

from medxgan_monai.networks.classifier import FrozenClassifier, class_probabilities, floating

__all__ = ["Attribution", "SaliencyExplainer", "Sweep", "class_probability", "normalize_saliency", "saliency_peak"]


def normalize_saliency(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The one post-processing convention for every saliency map, before scoring or display.

    Absolute value, summed over channels, then divided by each image's maximum, so every map is (B, 1, *spatial) in
    [0, 1] with its most salient pixel at 1 (an all-zero map stays zero). Scale-free scores (pointing game, top-k IoU,
    relevance mass) are unchanged by the division; it makes maps of different methods comparable on screen.

    Example::

        maps = normalize_saliency(torch.randn(2, 1, 64, 64))   # (2, 1, 64, 64), max 1 per image
    """
    magnitude = floating(maps.detach()).abs().sum(dim=1, keepdim=True)
    peak = saliency_peak(maps).clamp_min(eps)
    return magnitude / peak.view(-1, *([1] * (magnitude.ndim - 1)))


def saliency_peak(maps: torch.Tensor) -> torch.Tensor:
    """Each raw map's largest magnitude (B,): what :func:`normalize_saliency` divides by. The slices of a volume,
    normalized one by one, are brought back to one scale with it (:func:`~medxgan_monai.io.explanation_outputs.
    stack_slices`)."""
    return floating(maps.detach()).abs().sum(dim=1).flatten(1).amax(dim=1)


def class_probability(classifier: nn.Module, images: torch.Tensor, target: int = 1) -> torch.Tensor:
    """Probability of class ``target`` per image (softmax of two logits, or sigmoid of a single logit)."""
    return class_probabilities(classifier(images))[:, target]


@dataclass(frozen=True)
class Sweep:
    """Frames along a latent path from the counterfactual (alpha 0) to the reconstruction (alpha 1).

    ``alphas`` (K,), ``frames`` (B, K, C, *spatial) and the frames' target-class ``probabilities`` (B, K).
    """

    alphas: torch.Tensor
    frames: torch.Tensor
    probabilities: torch.Tensor


@dataclass(frozen=True)
class Attribution:
    """What one explanation method says about a batch: the one result type of every method.

    Args:
        maps: (B, 1, *spatial) in [0, 1] (after :func:`normalize_saliency`; raw from :meth:`SaliencyExplainer.
            raw_attribution`).
        counterfactual: (B, C, *spatial), the image the method compares with (its IG baseline or the image without
            the pathology), for methods that have one.
        counterfactual_probability: (B,), the classifier's target-class probability of ``counterfactual``.
        sweep: frames from the counterfactual to the image, for methods that walk a latent path.
        details: further per-image values (B,) by name, e.g. ``completeness_gap``.
        peak: (B,), each raw map's largest magnitude, which the normalized ``maps`` were divided by
            (:func:`saliency_peak`; set by :meth:`SaliencyExplainer.explain`).
    """

    maps: torch.Tensor
    counterfactual: torch.Tensor | None = None
    counterfactual_probability: torch.Tensor | None = None
    sweep: Sweep | None = None
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    peak: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.maps.shape[0]

    @staticmethod
    def nothing(images: torch.Tensor, counterfactual: bool) -> Attribution:
        """No image of the batch explained (see :meth:`placed`), for a method with or without a counterfactual."""
        maps = torch.zeros((images.shape[0], 1, *images.shape[2:]), dtype=torch.float32, device=images.device)
        peak = torch.zeros(images.shape[0], device=images.device)
        if not counterfactual:
            return Attribution(maps, peak=peak)
        probability = torch.full((images.shape[0],), float("nan"), device=images.device)
        return Attribution(maps, images.detach().clone(), probability, peak=peak)

    def placed(self, rows: torch.Tensor, images: torch.Tensor) -> Attribution:
        """This attribution of ``images[rows]`` placed into a batch of all ``images``; each other row is "not
        explained": a zero map, the image itself as its counterfactual and sweep frames, NaN probabilities and
        details (e.g. the slices of a volume that the classifier calls negative)."""
        size = images.shape[0]

        def spread(values: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
            if isinstance(fill, torch.Tensor):
                full = fill.to(values.dtype).clone()
            else:
                full = torch.full((size, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
            full[rows] = values
            return full

        maps = spread(self.maps, 0.0)
        counterfactual = None if self.counterfactual is None else spread(self.counterfactual, images)
        probability = None
        if self.counterfactual_probability is not None:
            probability = spread(self.counterfactual_probability, float("nan"))
        sweep = None
        if self.sweep is not None:
            frames = images.unsqueeze(1).expand(-1, self.sweep.frames.shape[1], *images.shape[1:])
            sweep = Sweep(
                self.sweep.alphas,
                spread(self.sweep.frames, frames),
                spread(self.sweep.probabilities, float("nan")),
            )
        details = {name: spread(values, float("nan")) for name, values in self.details.items()}
        peak = None if self.peak is None else spread(self.peak, 0.0)
        return Attribution(maps, counterfactual, probability, sweep, details, peak)


class SaliencyExplainer:
    """Base class: ``explainer(images) -> maps`` and ``explainer.explain(images) -> Attribution``, Captum-style, on
    a batch of preprocessed images.

    Subclasses implement :meth:`attribute` (raw maps, any sign, shape (B, C, *spatial)), or, for methods that also
    produce a counterfactual or a sweep, :meth:`raw_attribution` (then :meth:`attribute` returns its maps).
    :meth:`explain` returns the :class:`Attribution` with its maps after :func:`normalize_saliency`; calling the
    explainer returns just those maps. The classifier is wrapped in :class:`FrozenClassifier` (eval mode, no weight
    gradients); gradients are enabled inside the call even when the caller runs under ``torch.no_grad()``.

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
        return self.explain(images).maps

    def explain(self, images: torch.Tensor) -> Attribution:
        """The method's :class:`Attribution` of ``images`` (B, C, *spatial), maps normalized."""
        images = convert_to_tensor(images, track_meta=False)
        with torch.enable_grad():
            raw = self.raw_attribution(images)
        return replace(raw, maps=normalize_saliency(raw.maps), peak=saliency_peak(raw.maps))

    def raw_attribution(self, images: torch.Tensor) -> Attribution:
        """The :class:`Attribution` with raw maps; by default :meth:`attribute`'s maps and nothing else."""
        return Attribution(self.attribute(images))

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        """Raw attribution maps (B, C, *spatial) for ``images`` (B, C, *spatial); by default those of
        :meth:`raw_attribution`."""
        return self.raw_attribution(images).maps

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # each default is written in terms of the other: a subclass must implement one of them
        if cls.attribute is SaliencyExplainer.attribute and cls.raw_attribution is SaliencyExplainer.raw_attribution:
            raise TypeError(f"{cls.__name__} must implement attribute() or raw_attribution()")
