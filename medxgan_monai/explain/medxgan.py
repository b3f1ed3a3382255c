"""The medXGAN methods (Dravid et al. 2022): the difference map, latent-path IG and IG from the refined residual
counterfactual, on one shared inversion of the images into the generator's codes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medxgan_monai.explain.base import Attribution, SaliencyExplainer, Sweep, class_probability
from medxgan_monai.explain.baselines import IntegratedGradientsExplainer
from medxgan_monai.networks.classifier import (
    FrozenClassifier,
    class_log_probabilities,
    class_probabilities,
    floating,
    freeze,
)

__all__ = [
    "CounterfactualRefiner",
    "LatentInverter",
    "MedXGANDifference",
    "MedXGANIntegratedGradients",
    "MedXGANLatentIntegratedGradients",
    "RefinementStep",
    "interpolation_sweep",
    "latent_path_integrated_gradients",
]


def one_image_at_a_time(optimise, *batched: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``optimise`` run on each image of the batch alone (every argument sliced to that image), results concatenated.

    The iterative stages (inversion, refinement) amplify rounding: on the shipped networks a float32 difference of
    the codes of 1e-5 moves a refined counterfactual by up to 5e-2. Float32 kernels round differently for different
    batch sizes, so run batched, an image's explanation would depend on the images beside it; alone, it is computed
    with the same kernels whatever its batch. Costs the batching of these stages.
    """
    results = [optimise(*(tensor[index : index + 1] for tensor in batched)) for index in range(batched[0].shape[0])]
    return tuple(torch.cat(parts) for parts in zip(*results, strict=True))


@dataclass
class _Inversion:
    """One batch's inversion: the images, their codes, the final loss (``None`` until asked for), the seconds spent."""

    images: torch.Tensor
    z_a: torch.Tensor
    z_p: torch.Tensor
    loss: torch.Tensor | None
    seconds: float


class LatentInverter:
    """Find codes (z_a, z_p) whose generated image G(z_a, z_p) matches a real image x, to the eye and to C.

    Minimises, per image, ``pixel_weight * MSE(G(z), x) + classifier_weight * BCE(p(G(z)), p(x))`` with Adam on the
    codes, where p is the classifier's target-class probability (the paper's inversion; its defaults are 1000 steps,
    learning rate 1e-3, weights 10 and 1). The generator stays in eval mode and is never updated. Losses are summed
    per image, and each image is inverted alone (:func:`one_image_at_a_time`), so its codes do not depend on its batch.

    With ``counterfactual_weight > 0`` (beyond the paper) the loss also asks the counterfactual to be negative,
    ``counterfactual_weight * BCE(p(G(z_a, 0)), 0)``: pixel and classifier matching alone let the anatomy code z_a
    reproduce the lesion (then G(z_a, 0) still shows it), and this term pushes what the classifier sees into z_p.
    It costs a second generator and classifier pass per step.

    Starting codes: the encoder's estimate E(x) when an encoder is given (amortised inversion: a good start needs
    only a short refinement), else zeros (deterministic; the paper's code starts from random codes).

    The medXGAN methods share one inverter; inside :meth:`reuse`, inverting images equal to ones already inverted
    returns the codes found then (the inversion is deterministic), so several methods cost one inversion.
    :attr:`reused_seconds` adds up the time such reuses saved, so each method can report its cost as if run alone.

    Example::

        inverter = LatentInverter(generator, classifier, encoder, steps=25, learning_rate=1e-2)
        z_a, z_p, loss = inverter(images)
    """

    def __init__(
        self,
        generator: nn.Module,
        classifier: nn.Module,
        encoder: nn.Module | None = None,
        steps: int = 1000,
        learning_rate: float = 1e-3,
        pixel_weight: float = 10.0,
        classifier_weight: float = 1.0,
        counterfactual_weight: float = 0.0,
        target: int = 1,
    ) -> None:
        self.generator = freeze(generator)
        self.classifier = FrozenClassifier.wrap(classifier)
        self.encoder = None if encoder is None else freeze(encoder)
        self.steps = steps
        self.learning_rate = learning_rate
        self.pixel_weight = pixel_weight
        self.classifier_weight = classifier_weight
        self.counterfactual_weight = counterfactual_weight
        self.target = target
        self.reused_seconds = 0.0
        self._inverted: list[_Inversion] | None = None

    @contextmanager
    def reuse(self):
        """Within this context, images equal to ones already inverted get the same codes without a new inversion.

        Only within it: the codes depend on the classifier, which a caller may change between calls (the
        randomization test re-initializes its layers).
        """
        self._inverted = []
        try:
            yield self
        finally:
            self._inverted = None

    def initial_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is not None:
            with torch.no_grad():
                z_a, z_p = self.encoder(images)
            return floating(z_a), floating(z_p)
        batch = images.shape[0]
        return (
            images.new_zeros(batch, self.generator.anatomy_dim),
            images.new_zeros(batch, self.generator.pathology_dim),
        )

    def loss(
        self, z_a: torch.Tensor, z_p: torch.Tensor, images: torch.Tensor, target_probability: torch.Tensor
    ) -> torch.Tensor:
        """Per-image inversion loss of the codes (z_a, z_p)."""
        generated = self.generator(z_a, z_p)
        pixel = F.mse_loss(generated, images, reduction="none").flatten(1).mean(1)
        probability = class_probability(self.classifier, generated, self.target).clamp(1e-6, 1 - 1e-6)
        matching = F.binary_cross_entropy(probability, target_probability, reduction="none")
        loss = self.pixel_weight * pixel + self.classifier_weight * matching
        if self.counterfactual_weight > 0:
            counterfactual = self.generator(z_a, torch.zeros_like(z_p))
            # -log(1 - p) from the logits: a probability rounded to 1 would have no gradient
            other_class = class_log_probabilities(self.classifier(counterfactual))[:, 1 - self.target]
            loss = loss - self.counterfactual_weight * other_class
        return loss

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes z_a (B, anatomy_dim), z_p (B, pathology_dim) of ``images`` and their final losses (B,)."""
        inversion = self._inversion(images)
        if inversion.loss is None:  # inverted by :meth:`codes`: the loss of the same codes, computed now
            start = time.perf_counter()
            (inversion.loss,) = one_image_at_a_time(self._final_loss, inversion.images, inversion.z_a, inversion.z_p)
            inversion.seconds += time.perf_counter() - start
        return inversion.z_a, inversion.z_p, inversion.loss

    def codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes z_a, z_p of ``images`` without the final loss, which costs up to four generator and classifier passes
        per image (the encoder's codes alone, ``steps=0``, cost one encoder pass)."""
        inversion = self._inversion(images)
        return inversion.z_a, inversion.z_p

    def _inversion(self, images: torch.Tensor) -> _Inversion:
        """The inversion of ``images`` already made within :meth:`reuse` (its seconds added to
        :attr:`reused_seconds`), else a new one, without its loss."""
        images = floating(images.detach())
        for inversion in self._inverted or ():
            seen = inversion.images
            if seen.shape == images.shape and seen.dtype == images.dtype and torch.equal(seen, images):
                self.reused_seconds += inversion.seconds
                return inversion
        start = time.perf_counter()
        z_a, z_p = one_image_at_a_time(self._invert, images)
        inversion = _Inversion(images.clone(), z_a, z_p, None, time.perf_counter() - start)
        if self._inverted is not None:
            self._inverted.append(inversion)
        return inversion

    def _target_probability(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return class_probability(self.classifier, images, self.target)

    def _invert(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = floating(images.detach())
        z_a, z_p = (code.clone().requires_grad_(True) for code in self.initial_codes(images))
        if self.steps > 0:
            target_probability = self._target_probability(images)
            with torch.enable_grad():
                optimizer = torch.optim.Adam([z_a, z_p], lr=self.learning_rate, betas=(0.5, 0.999))
                for _ in range(self.steps):
                    optimizer.zero_grad(set_to_none=True)
                    self.loss(z_a, z_p, images, target_probability).sum().backward()
                    optimizer.step()
        return z_a.detach(), z_p.detach()

    def _final_loss(self, images: torch.Tensor, z_a: torch.Tensor, z_p: torch.Tensor) -> tuple[torch.Tensor]:
        with torch.no_grad():
            return (self.loss(z_a, z_p, images, self._target_probability(images)),)


class CounterfactualRefiner:
    """Residual counterfactuals of real images: the generator's pathology change, applied to the image itself.

    Given the codes (z_a, z_p) of an image x, the residual counterfactual is
    ``x_cf = clip(x - (G(z_a, z_p) - G(z_a', z_p')), 0, 1)``: the real image minus what the generator changes between
    the reconstruction and the codes (z_a', z_p'). With (z_a', z_p') = (z_a, 0) this is the medXGAN counterfactual's
    change moved onto the real image; it keeps x's own detail, but where the reconstruction misplaces the lesion the
    change misses it and the classifier still sees the pathology. ``steps`` Adam steps on (z_a', z_p'), starting at
    (z_a, 0) or the given start codes, then minimise per image

        -log(1 - p(x_cf)) + sparsity_weight * mean rho(G(z_a, z_p) - G(z_a', z_p'))

    (p: the classifier's target-class probability, the log taken from the logits; rho(c) = sqrt(c^2 + s^2) - s, the
    Charbonnier form of |c| with ``smoothing`` s): the change must remove what the classifier sees, and as little
    else as possible, while staying a difference of two generated images. Each image gets the sparsest counterfactual
    (least mean |change|) among the iterates the classifier calls negative (p < 0.5), or the last iterate when none
    is. ``steps=0`` returns the unrefined residual. With ``max_steps`` above ``steps``, an image none of whose
    iterates is valid after ``steps`` steps goes on until one is, or until ``max_steps``: few steps for most images
    from a good start (a counterfactual encoder's codes), and no image left with an invalid counterfactual that more
    steps would have fixed.

    Rounding: each image is refined alone (:func:`one_image_at_a_time`), so its result does not depend on its batch.
    Two choices keep the refinement from amplifying rounding. The smoothing: with the plain |c| the gradient of a
    pixel whose change rounds to either side of zero flips sign, and Adam, which rescales small gradients to full
    steps, turned one such flip into a 1e-3 difference of the counterfactual; s = 1e-3 is far below a visible change
    (|c| >> s behaves as |c|). Adam's standard beta1 = 0.9: with the GAN setting 0.5 the trajectory was chaotic on
    the shipped networks (a 1e-12 change of the codes grew tenfold every five steps, in float64 too). The result
    still moves about a thousand times as much as its codes do, so float32 rounding of the inversion (about 1e-5 of
    the codes) still changes it between CPUs.

    Example::

        refiner = CounterfactualRefiner(generator, classifier, steps=50, sparsity_weight=100.0)
        counterfactuals, probabilities = refiner(images, z_a, z_p)
    """

    def __init__(
        self,
        generator: nn.Module,
        classifier: nn.Module,
        steps: int = 50,
        learning_rate: float = 0.02,
        sparsity_weight: float = 100.0,
        smoothing: float = 1e-3,
        target: int = 1,
        max_steps: int | None = None,
    ) -> None:
        if steps < 0 or sparsity_weight < 0:
            raise ValueError(f"steps and sparsity_weight must be >= 0, not {steps} and {sparsity_weight}")
        if smoothing <= 0:
            raise ValueError(
                f"smoothing must be > 0 (a kink at zero change makes results depend on rounding), not {smoothing}"
            )
        self.generator = freeze(generator)
        self.classifier = FrozenClassifier.wrap(classifier)
        self.steps = steps
        self.max_steps = steps if max_steps is None else max(steps, max_steps)  # never fewer than ``steps``
        self.learning_rate = learning_rate
        self.sparsity_weight = sparsity_weight
        self.smoothing = smoothing
        self.target = target

    def counterfactual(self, images, reconstruction, z_a, z_p) -> tuple[torch.Tensor, torch.Tensor]:
        change = reconstruction - self.generator(z_a, z_p)
        return (images - change).clamp(0, 1), change

    def objective(self, images, reconstruction, anatomy, pathology) -> RefinementStep:
        """The per-image loss of the codes (``anatomy``, ``pathology``) with what it is made of: the residual
        counterfactual, its target-class probability and its mean |change|. The refinement's steps minimise it per
        image."""
        counterfactual, change = self.counterfactual(images, reconstruction, anatomy, pathology)
        logits = self.classifier(counterfactual)
        smooth = ((change.square() + self.smoothing**2).sqrt() - self.smoothing).flatten(1).mean(1)
        loss = -class_log_probabilities(logits)[:, 1 - self.target] + self.sparsity_weight * smooth
        probability = class_probabilities(logits)[:, self.target]
        return RefinementStep(loss, counterfactual, probability.detach(), change.detach().abs().flatten(1).mean(1))

    def __call__(
        self,
        images: torch.Tensor,
        z_a: torch.Tensor,
        z_p: torch.Tensor,
        start: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual counterfactuals (B, C, *spatial) of ``images`` with codes (z_a, z_p), and their probabilities.

        ``start``: the codes (z_a', z_p') the steps start from, e.g. a :class:`~medxgan_monai.networks.MedXGANEncoder`
        trained by :class:`~medxgan_monai.engines.CounterfactualEncoderTrainer` to predict where the refinement ends
        (amortised refinement: a few steps then do what 50 do from the default (z_a, 0))."""
        start_a, start_p = (z_a, torch.zeros_like(z_p)) if start is None else (floating(code) for code in start)
        return one_image_at_a_time(self._refine, images, z_a, z_p, start_a, start_p)

    def _refine(self, images, z_a, z_p, start_a, start_p) -> tuple[torch.Tensor, torch.Tensor]:
        images = floating(images.detach())
        with torch.no_grad():
            reconstruction = floating(self.generator(z_a, z_p))
        anatomy = start_a.detach().clone().requires_grad_(True)
        pathology = start_p.detach().clone().requires_grad_(True)
        # Adam's standard momentum: with beta1 = 0.5 (the GAN setting) these steps oscillate around the validity
        # boundary and are chaotic, so one float32 ulp grew to a different counterfactual (see the class docstring)
        optimizer = torch.optim.Adam([anatomy, pathology], lr=self.learning_rate, betas=(0.9, 0.999))
        best = _SparsestValid(images.shape[0], images.device)
        for index in range(self.max_steps + 1):
            last = index == self.max_steps
            with torch.set_grad_enabled(not last):  # the last iterate is only scored
                step = self.objective(images, reconstruction, anatomy, pathology)
            best.update(step)
            # past the minimum number of steps, an image stops once it has a valid counterfactual
            if last or (index >= self.steps and bool(best.valid.all())):
                break
            optimizer.zero_grad(set_to_none=True)
            step.loss.sum().backward()
            optimizer.step()
        return best.counterfactual, best.probability


class RefinementStep(NamedTuple):
    """One evaluation of :meth:`CounterfactualRefiner.objective` (each field per image)."""

    loss: torch.Tensor
    counterfactual: torch.Tensor
    probability: torch.Tensor
    sparsity: torch.Tensor


class _SparsestValid:
    """Per image, the sparsest counterfactual seen that the classifier calls negative, else the latest one."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.counterfactual: torch.Tensor | None = None
        self.probability = torch.ones(batch, device=device)
        self.sparsity = torch.full((batch,), float("inf"), device=device)
        self.valid = torch.zeros(batch, dtype=torch.bool, device=device)

    def update(self, step: RefinementStep) -> None:
        """Offer the iterate's counterfactual (ranked by its mean |change|)."""
        counterfactual, probability, sparsity = step.counterfactual.detach(), step.probability, step.sparsity
        valid = probability < 0.5
        take = (valid & (~self.valid | (sparsity < self.sparsity))) | (~valid & ~self.valid)
        if self.counterfactual is None:  # the first update takes every image
            self.counterfactual = counterfactual
        view = take.view(-1, *([1] * (counterfactual.ndim - 1)))
        self.counterfactual = torch.where(view, counterfactual, self.counterfactual)
        self.probability = torch.where(take, probability, self.probability)
        self.sparsity = torch.where(take, sparsity, self.sparsity)
        self.valid |= valid


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def latent_path_integrated_gradients(
    generator: nn.Module,
    classifier: nn.Module,
    z_a: torch.Tensor,
    z_p: torch.Tensor,
    steps: int = 50,
    target: int = 1,
    variant: str = "exact",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients of the classifier along the generator path x(a) = G(z_a, a z_p), a from 0 to 1.

    ``variant="exact"`` (default) is path IG in pixel space: the sum over the ``steps`` segments of the mean of the
    gradients of the target-class probability at both segment ends times the segment's image increment
    x(a_k) - x(a_{k-1}). Its attributions add up to p(x(1)) - p(x(0)) = C(x+) - C(x0) up to the trapezoid error, which
    is returned as the completeness gap (per image, absolute, in probability units).

    ``variant="paper"`` is the official code's "medXGAN + IG": the endpoint difference x+ - x0 times the mean gradient
    at the ``steps + 1`` path points, each taken for the class the classifier predicts at that point. Its gap is
    reported the same way but it has no completeness guarantee.

    Returns:
        attributions (B, C, *spatial) with sign, and the completeness gap (B,).

    Example::

        attributions, gap = latent_path_integrated_gradients(generator, classifier, z_a, z_p, steps=50)
    """
    if variant not in ("exact", "paper"):
        raise ValueError(f"variant must be 'exact' or 'paper', not {variant!r}")
    classifier = FrozenClassifier.wrap(classifier)
    alphas = torch.linspace(0, 1, steps + 1, device=z_a.device)
    batch = z_a.shape[0]
    # path points for every image, flattened as (point, image)
    codes_a = z_a.repeat(steps + 1, 1)
    codes_p = (alphas.view(-1, 1, 1) * z_p.unsqueeze(0)).reshape(-1, z_p.shape[1])
    frames, gradients, probabilities = [], [], []
    for part in _chunks(codes_a.shape[0], chunk_size):
        with torch.no_grad():
            images = floating(generator(codes_a[part], codes_p[part]))
        images.requires_grad_(True)
        with torch.enable_grad():
            probability = class_probability(classifier, images, target)
            explained = probability
            if variant == "paper":
                # the probability of whichever class is predicted at this path point (binary: p or 1 - p)
                explained = torch.where(probability >= 0.5, probability, 1 - probability)
            (gradient,) = torch.autograd.grad(explained.sum(), images)
        probabilities.append(probability.detach())
        frames.append(images.detach())
        gradients.append(gradient)
    frames = torch.cat(frames).view(steps + 1, batch, *frames[0].shape[1:])
    gradients = torch.cat(gradients).view_as(frames)
    probabilities = torch.cat(probabilities).view(steps + 1, batch)
    if variant == "exact":
        attributions = (0.5 * (gradients[1:] + gradients[:-1]) * (frames[1:] - frames[:-1])).sum(0)
    else:
        attributions = (frames[-1] - frames[0]) * gradients.mean(0)
    expected = probabilities[-1] - probabilities[0]
    gap = (attributions.flatten(1).sum(1) - expected).abs()
    return attributions, gap


def interpolation_sweep(
    generator: nn.Module, classifier: nn.Module, z_a: torch.Tensor, z_p: torch.Tensor, frames: int = 11, target=1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames G(z_a, a z_p) for ``frames`` values of a from 0 (counterfactual) to 1 (reconstruction).

    Returns:
        alphas (K,), images (B, K, C, *spatial) and target-class probabilities (B, K).
    """
    alphas = torch.linspace(0, 1, frames, device=z_a.device)
    images, probabilities = [], []
    with torch.no_grad():
        for alpha in alphas:
            image = floating(generator(z_a, alpha * z_p))
            images.append(image)
            probabilities.append(class_probability(classifier, image, target))
    return alphas, torch.stack(images, dim=1), torch.stack(probabilities, dim=1)


class MedXGANDifference(SaliencyExplainer):
    """The medXGAN difference map |G(z_a, z_p) - G(z_a, 0)| of each image's codes (the paper's visualization).

    The codes come from ``inverter`` (:class:`LatentInverter`); the counterfactual is G(z_a, 0), the same anatomy
    without the pathology code. The result also carries the interpolation sweep of ``sweep_frames`` frames from the
    counterfactual (alpha 0) to the reconstruction (alpha 1), whose end frames the map is made of, and the
    reconstruction's probability and the inversion loss as details.

    Example::

        inverter = LatentInverter(generator, classifier, encoder, steps=25, learning_rate=1e-2)
        attribution = MedXGANDifference(classifier, generator, inverter).explain(images)
        attribution.maps, attribution.counterfactual, attribution.sweep.frames
    """

    name = "medxgan"

    def __init__(
        self, classifier: nn.Module, generator: nn.Module, inverter: LatentInverter, sweep_frames: int = 11, target=1
    ) -> None:
        super().__init__(classifier, target)
        if sweep_frames < 2:
            raise ValueError(f"sweep_frames must be at least 2 (counterfactual and reconstruction), not {sweep_frames}")
        self.generator = freeze(generator)
        self.inverter = inverter
        self.sweep_frames = sweep_frames

    def raw_attribution(self, images: torch.Tensor) -> Attribution:
        z_a, z_p, inversion_loss = self.inverter(images)
        alphas, frames, probabilities = interpolation_sweep(
            self.generator, self.classifier, z_a, z_p, self.sweep_frames, self.target
        )
        # the sweep starts at the counterfactual G(z_a, 0) and ends at the reconstruction G(z_a, z_p)
        counterfactual, reconstruction = frames[:, 0], frames[:, -1]
        return Attribution(
            maps=(reconstruction - counterfactual).abs(),
            counterfactual=counterfactual,
            counterfactual_probability=probabilities[:, 0],
            sweep=Sweep(alphas, frames, probabilities),
            details={"reconstruction_probability": probabilities[:, -1], "inversion_loss": inversion_loss},
        )


class MedXGANLatentIntegratedGradients(SaliencyExplainer):
    """Integrated Gradients along the generator path G(z_a, a z_p), a from 0 to 1
    (:func:`latent_path_integrated_gradients`); the counterfactual is the path's start G(z_a, 0).

    Details: ``completeness_gap`` (per image, in probability units).

    Example::

        attribution = MedXGANLatentIntegratedGradients(classifier, generator, inverter, steps=50).explain(images)
    """

    name = "medxgan_lig"

    def __init__(
        self,
        classifier: nn.Module,
        generator: nn.Module,
        inverter: LatentInverter,
        steps: int = 50,
        variant: str = "exact",
        target: int = 1,
    ) -> None:
        super().__init__(classifier, target)
        self.generator = freeze(generator)
        self.inverter = inverter
        self.steps = steps
        self.variant = variant

    def raw_attribution(self, images: torch.Tensor) -> Attribution:
        z_a, z_p = self.inverter.codes(images)
        attributions, gap = latent_path_integrated_gradients(
            self.generator, self.classifier, z_a, z_p, self.steps, self.target, self.variant
        )
        with torch.no_grad():
            counterfactual = floating(self.generator(z_a, torch.zeros_like(z_p)))
            probability = class_probability(self.classifier, counterfactual, self.target)
        return Attribution(attributions, counterfactual, probability, details={"completeness_gap": gap})


class MedXGANIntegratedGradients(SaliencyExplainer):
    """Exact image-space Integrated Gradients from each image's refined residual counterfactual to the image: the
    paper's "medXGAN + IG" with the counterfactual as the IG baseline, and the project's default map.

    The residual counterfactual is the real image minus the generator's pathology change, refined against the
    classifier with ``counterfactual_steps`` steps (:class:`CounterfactualRefiner`; 0 keeps the unrefined
    residual, the paper-like setting); the codes come from ``inverter``. With a ``counterfactual_encoder`` (trained
    by :class:`~medxgan_monai.engines.CounterfactualEncoderTrainer`, the bundle's ``train_counterfactual_encoder.json``)
    the steps start from the codes it predicts for the image instead of (z_a, 0): amortised refinement, where one step
    (the bundle's default) localizes as well as 50 from (z_a, 0); ``counterfactual_max_steps`` lets an image whose
    counterfactual is not valid yet go on (the bundle: up to 50). ``ig_steps``: IG's steps from the
    counterfactual, which is close to the image, so fewer than IG from a black image needs (the completeness gap is
    reported per image).

    Example::

        explainer = MedXGANIntegratedGradients(classifier, generator, inverter, counterfactual_steps=50)
        attribution = explainer.explain(images)   # maps, residual counterfactual and its probability
        amortised = MedXGANIntegratedGradients(classifier, generator, inverter, counterfactual_encoder,
                                               counterfactual_steps=1, counterfactual_max_steps=50)
    """

    name = "medxgan_ig"

    def __init__(
        self,
        classifier: nn.Module,
        generator: nn.Module,
        inverter: LatentInverter,
        counterfactual_encoder: nn.Module | None = None,
        counterfactual_steps: int = 0,
        counterfactual_learning_rate: float = 0.02,
        counterfactual_sparsity: float = 100.0,
        ig_steps: int = 50,
        target: int = 1,
        counterfactual_max_steps: int | None = None,
    ) -> None:
        super().__init__(classifier, target)
        self.inverter = inverter
        self.counterfactual_encoder = None if counterfactual_encoder is None else freeze(counterfactual_encoder)
        self.refiner = CounterfactualRefiner(
            generator,
            self.classifier,
            steps=counterfactual_steps,
            max_steps=counterfactual_max_steps,
            learning_rate=counterfactual_learning_rate,
            sparsity_weight=counterfactual_sparsity,
            target=target,
        )
        self.image_ig = IntegratedGradientsExplainer(self.classifier, steps=ig_steps, target=target)

    def raw_attribution(self, images: torch.Tensor) -> Attribution:
        images = floating(images.detach())
        z_a, z_p = self.inverter.codes(images)
        start = None
        if self.counterfactual_encoder is not None:
            with torch.no_grad():
                start = self.counterfactual_encoder(images)
        residual, probability = self.refiner(images, z_a, z_p, start)
        integrated = self.image_ig.raw_attribution(images, baselines=residual)
        return Attribution(integrated.maps, residual, probability, details=integrated.details)
