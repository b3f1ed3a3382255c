"""Baseline explainers with the medXGAN call shape: Grad-CAM, Grad-CAM++, Integrated Gradients, input gradient,
SmoothGrad, occlusion."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity, VanillaGrad
from torch import nn

from medxgan_monai.explain.base import Attribution, SaliencyExplainer, class_probability
from medxgan_monai.networks.classifier import class_probabilities, floating

__all__ = [
    "GradCAMExplainer",
    "GradCAMPlusPlusExplainer",
    "InputGradientExplainer",
    "IntegratedGradientsExplainer",
    "OcclusionExplainer",
    "SmoothGradExplainer",
]


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
    #: the MONAI class-activation-map class (its constructor registers hooks on the network, so it is built once)
    cam_type: type[GradCAM] = GradCAM

    def __init__(
        self, classifier: nn.Module, target_layers: str | Sequence[str] = "class_layers.relu", target: int = 1
    ):
        super().__init__(classifier, target)
        self.cam = self.cam_type(self.classifier.network, target_layers=target_layers, postprocessing=lambda maps: maps)

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        # the frozen classifier's weights need no gradient, so the graph must start at the input
        return self.cam(floating(images.detach()).requires_grad_(True), class_idx=self.target)


class GradCAMPlusPlusExplainer(GradCAMExplainer):
    """Grad-CAM++ (Chattopadhyay et al. 2018) through MONAI's :class:`monai.visualize.GradCAMpp`, with the
    conventions of :class:`GradCAMExplainer` (identity post-processing, the same ``target_layers``).

    The channel weights are the positive gradients weighted per location by the paper's closed-form alphas (second and
    third derivatives of exp(logit)), instead of Grad-CAM's plain mean gradient. Images are explained one at a time:
    MONAI 1.6.1 multiplies the gradients (B, C, *spatial) by exp of the squeezed scores (B,), which broadcasts over
    the last spatial axis, not the batch, as soon as B > 1.

    Example::

        maps = GradCAMPlusPlusExplainer(classifier, "class_layers.relu")(images)
    """

    name = "gradcampp"
    cam_type = GradCAMpp

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        one_image = super().attribute
        return torch.cat([one_image(image[None]) for image in images])


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


class _ClassProbabilities(nn.Module):
    """The classifier's class probabilities (B, 2) as a module, so MONAI's gradient methods differentiate the
    target-class probability (as the other gradient maps here do) rather than its logit."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_probabilities(self.classifier(images))


class SmoothGradExplainer(SaliencyExplainer):
    """SmoothGrad (Smilkov et al. 2017): the input gradient of the target-class probability (the ``gradient`` map)
    averaged over ``samples`` noisy copies of the image, each gradient by MONAI's :class:`monai.visualize.VanillaGrad`.

    The noise is Gaussian with standard deviation ``noise`` times the image's intensity range (max - min), as in the
    paper and MONAI's :class:`~monai.visualize.SmoothGrad`. The average is of the signed gradients (the paper's
    SmoothGrad; :func:`normalize_saliency` then takes the absolute value), not MONAI's default ``magnitude`` variant
    (root of the summed squares). The noise is drawn here rather than by MONAI's ``SmoothGrad``, which draws it from
    torch's global random state: each image gets its own CPU generator seeded with ``seed``, so a map is the same call
    to call, on CPU and GPU (up to rounding), and whatever the other images of the batch.

    Args:
        classifier: the classifier.
        samples: noisy copies per image (the paper's 50).
        noise: noise standard deviation as a fraction of each image's intensity range (the paper's 15%).
        seed: seed of each image's noise.
        target: the explained class.

    Example::

        maps = SmoothGradExplainer(classifier, samples=50, noise=0.15)(images)
    """

    name = "smoothgrad"

    def __init__(
        self, classifier: nn.Module, samples: int = 50, noise: float = 0.15, seed: int = 0, target: int = 1
    ) -> None:
        super().__init__(classifier, target)
        if samples < 1 or noise < 0:
            raise ValueError(f"SmoothGrad needs samples >= 1 and noise >= 0, got {samples} and {noise}")
        self.gradient = VanillaGrad(_ClassProbabilities(self.classifier))
        self.samples = samples
        self.noise = noise
        self.seed = seed

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._smoothed_gradient(image[None]) for image in floating(images.detach())])

    def _smoothed_gradient(self, image: torch.Tensor) -> torch.Tensor:
        """The mean gradient over the noisy copies of one image (1, C, *spatial)."""
        generator = torch.Generator().manual_seed(self.seed)
        spread = self.noise * (image.max() - image.min())
        total = torch.zeros_like(image)
        for _ in range(self.samples):
            # drawn in float32 on the CPU whatever the image's dtype and device: the same noise everywhere
            noise = torch.randn(image.shape, generator=generator).to(image)
            total += self.gradient(image + spread * noise, index=self.target, retain_graph=False)
        return total / self.samples


class IntegratedGradientsExplainer(SaliencyExplainer):
    """Integrated Gradients (Sundararajan et al. 2017) through Captum, on the target-class probability.

    The baseline is a constant image of value ``baseline`` (default 0: black, the background of images scaled to
    [0, 1]); attributions sum to p(x) - p(baseline) up to the Riemann error of ``steps`` Gauss-Legendre points.
    That error, ``|sum(attributions) - (p(x) - p(baseline))|`` per image in probability units (Captum's convergence
    delta), is the ``completeness_gap`` detail of :meth:`explain`.

    Example::

        maps = IntegratedGradientsExplainer(classifier, steps=50)(images)
        IntegratedGradientsExplainer(classifier, steps=50).explain(images).details["completeness_gap"]   # (B,)
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

    def raw_attribution(self, images: torch.Tensor, baselines: torch.Tensor | None = None) -> Attribution:
        """IG maps of ``images`` from ``baselines`` (images of the same shape; default: the constant baseline), with
        their ``completeness_gap``."""
        attributions, delta = self.integrated_gradients.attribute(
            floating(images.detach()),
            baselines=self.baseline if baselines is None else floating(baselines.detach()),
            n_steps=self.steps,
            internal_batch_size=self.internal_batch_size,
            return_convergence_delta=True,
        )
        return Attribution(attributions, details={"completeness_gap": delta.detach().abs().view(-1)})


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
