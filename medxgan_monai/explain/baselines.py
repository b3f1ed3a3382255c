"""Baseline explainers with the medXGAN call shape: Grad-CAM, Integrated Gradients, input gradient, occlusion."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.visualize import GradCAM, OcclusionSensitivity
from torch import nn

from medxgan_monai.explain.base import SaliencyExplainer, class_probability
from medxgan_monai.networks.classifier import class_probabilities, floating

__all__ = ["GradCAMExplainer", "InputGradientExplainer", "IntegratedGradientsExplainer", "OcclusionExplainer"]


class GradCAMExplainer(SaliencyExplainer):
    """Grad-CAM (Selvaraju et al. 2017) through MONAI's :class:`monai.visualize.GradCAM`.

    MONAI's default post-processing maps (min, max) to (1, 0) and so inverts the map; here it is replaced by the
    identity, and the shared :func:`normalize_saliency` is applied instead.

    Args:
        classifier: the classifier.
        target_layers: the layer whose activations are weighted, e.g. ``"class_layers.relu"`` for MONAI's DenseNet.
        target: the explained class.

    Example::

        maps = GradCAMExplainer(classifier, "class_layers.relu")(images)
    """

    name = "gradcam"

    def __init__(
        self, classifier: nn.Module, target_layers: str | Sequence[str] = "class_layers.relu", target: int = 1
    ):
        super().__init__(classifier, target)
        self.cam = GradCAM(self.classifier.network, target_layers=target_layers, postprocessing=lambda maps: maps)

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        # the frozen classifier's weights need no gradient, so the graph must start at the input
        return self.cam(floating(images.detach()).requires_grad_(True), class_idx=self.target)


class InputGradientExplainer(SaliencyExplainer):
    """The gradient of the target-class probability with respect to the input pixels (Simonyan et al. 2014).

    Example::

        maps = InputGradientExplainer(classifier)(images)
    """

    name = "gradient"

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        inputs = floating(images.detach()).requires_grad_(True)
        (gradients,) = torch.autograd.grad(class_probability(self.classifier, inputs, self.target).sum(), inputs)
        return gradients


class IntegratedGradientsExplainer(SaliencyExplainer):
    """Integrated Gradients (Sundararajan et al. 2017) through Captum, on the target-class probability.

    The baseline is a constant image of value ``baseline`` (default 0: black, the background of images scaled to
    [0, 1]); attributions sum to p(x) - p(baseline) up to the Riemann error of ``steps`` Gauss-Legendre points.

    Example::

        maps = IntegratedGradientsExplainer(classifier, steps=50)(images)
    """

    name = "ig"

    def __init__(
        self, classifier: nn.Module, steps: int = 50, baseline: float = 0.0, internal_batch_size: int = 64, target=1
    ):
        super().__init__(classifier, target)
        from captum.attr import IntegratedGradients

        self.integrated_gradients = IntegratedGradients(lambda x: class_probability(self.classifier, x, self.target))
        self.steps = steps
        self.baseline = baseline
        self.internal_batch_size = internal_batch_size

    def attribute(self, images: torch.Tensor, baselines: torch.Tensor | None = None) -> torch.Tensor:
        """IG maps of ``images`` from ``baselines`` (images of the same shape; default: the constant baseline)."""
        return self.integrated_gradients.attribute(
            floating(images.detach()),
            baselines=self.baseline if baselines is None else floating(baselines.detach()),
            n_steps=self.steps,
            internal_batch_size=self.internal_batch_size,
        )


class OcclusionExplainer(SaliencyExplainer):
    """Occlusion sensitivity (Zeiler and Fergus 2014) through MONAI's :class:`monai.visualize.OcclusionSensitivity`.

    The map is the drop of the target-class probability when a patch around each pixel is replaced by the image mean
    (positive where hiding the pixel lowers the evidence). MONAI handles one image at a time, so batches are looped.
    MONAI 1.6.1 returns the per-class maps on dimension 1 (``(1, classes, *spatial)``), not last as its docstring says.

    Args:
        classifier: the classifier.
        mask_size: occluding patch size in pixels; ``None`` uses an eighth of the smallest image side (at least 4).
        overlap: overlap of neighbouring patches, in [0, 1).
        mode: the occluding value (see MONAI): ``"mean_img"``, ``"mean_patch"``, ``"gaussian"`` or a float.
        n_batch: occluded images per classifier call.

    Example::

        maps = OcclusionExplainer(classifier, mask_size=8)(images)
    """

    name = "occlusion"

    def __init__(
        self,
        classifier: nn.Module,
        mask_size: int | None = None,
        overlap: float = 0.5,
        mode: str | float = "mean_img",
        n_batch: int = 64,
        target: int = 1,
    ) -> None:
        super().__init__(classifier, target)
        self.mask_size = mask_size
        self.overlap = overlap
        self.mode = mode
        self.n_batch = n_batch

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        mask_size = self.mask_size or max(4, min(images.shape[2:]) // 8)
        occlusion = OcclusionSensitivity(
            self.classifier.network,
            mask_size=mask_size,
            n_batch=self.n_batch,
            verbose=False,
            mode=self.mode,
            overlap=self.overlap,
            activate=class_probabilities,
        )
        maps = []
        with torch.no_grad(), warnings.catch_warnings():
            # MONAI 1.6.1's sliding-window indexing triggers a torch deprecation warning per image; not ours to fix
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            for image in floating(images.detach()):
                reference = class_probability(self.classifier, image[None], self.target)
                occluded, _ = occlusion(image[None])
                maps.append(
                    reference.view(1, 1, *([1] * (images.ndim - 2))) - occluded[:, self.target : self.target + 1]
                )
        return torch.cat(maps)
