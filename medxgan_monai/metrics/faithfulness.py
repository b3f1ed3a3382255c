"""Faithfulness of saliency maps to the classifier: deletion and insertion curves (Petsiuk et al., BMVC 2018, RISE).

A faithful map orders pixels by how much the classifier relies on them: deleting its top pixels first should make
the target-class probability fall fast (low deletion AUC), and inserting them first into a blurred copy should make
it rise fast (high insertion AUC).
"""

from __future__ import annotations

import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from medxgan_monai.networks.classifier import class_probabilities

__all__ = ["PerturbationCurves", "deletion_insertion"]


class PerturbationCurves:
    """Deletion and insertion curves of a batch: ``fractions`` (K,), ``deletion`` and ``insertion`` (B, K) target-class
    probabilities, and their areas under the curve ``deletion_auc`` and ``insertion_auc`` (B,) (trapezoid rule over
    the fraction of pixels perturbed, so both lie in [0, 1])."""

    def __init__(self, fractions: torch.Tensor, deletion: torch.Tensor, insertion: torch.Tensor) -> None:
        self.fractions, self.deletion, self.insertion = fractions, deletion, insertion

    @property
    def deletion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.deletion, self.fractions, dim=1)

    @property
    def insertion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.insertion, self.fractions, dim=1)


@torch.no_grad()
def deletion_insertion(
    classifier: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: int = 1,
    steps: int = 20,
    deleted_value: float = 0.0,
    blur_sigma: float | None = None,
    batch_size: int = 64,
) -> PerturbationCurves:
    """Deletion and insertion curves of ``maps`` (B, 1, *spatial) for ``images`` (B, C, *spatial).

    At step i of ``steps``, the ``round(i / steps * N)`` most salient of the N pixels (ties broken by pixel order) are
    replaced by ``deleted_value`` (deletion; 0 is the background of images scaled to [0, 1]) or copied from the image
    into a Gaussian-blurred copy of it (insertion). The blur must erase the evidence, or insertion starts at the full
    score and measures nothing: ``blur_sigma`` defaults to 1/8 of the image's largest side (8 pixels at 64; on the
    demo positives RISE's 5 pixels at 224, scaled to 1.4 pixels at 64, left the mean positive probability at 0.97,
    8 pixels brought it to 0.00001). The classifier sees B * (steps + 1) images per curve, ``batch_size`` at a time.

    Example::

        curves = deletion_insertion(classifier, images, maps)
        curves.deletion_auc, curves.insertion_auc      # (B,) each; lower / higher is better
    """
    if maps.shape[0] != images.shape[0] or maps.shape[2:] != images.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}")
    spatial = images.shape[2:]
    pixels = spatial.numel()
    fractions = torch.linspace(0, 1, steps + 1)
    counts = torch.round(fractions * pixels).long()
    order = torch.argsort(maps.detach().float().flatten(1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels).expand_as(order).contiguous())
    # (B, K, 1, *spatial): True where the pixel is perturbed at that step
    perturbed = (rank.unsqueeze(1) < counts.view(1, -1, 1)).view(images.shape[0], steps + 1, 1, *spatial)
    sigma = blur_sigma if blur_sigma is not None else max(spatial) / 8
    blurred = GaussianFilter(len(spatial), sigma)(images.float())
    originals, blurred = images.float().unsqueeze(1), blurred.unsqueeze(1)
    deleted = torch.where(perturbed.to(images.device), torch.full_like(originals, deleted_value), originals)
    inserted = torch.where(perturbed.to(images.device), originals, blurred)

    def target_probabilities(batch: torch.Tensor) -> torch.Tensor:
        flat = batch.flatten(0, 1)
        parts = [
            class_probabilities(classifier(flat[s : s + batch_size]))[:, target]
            for s in range(0, len(flat), batch_size)
        ]
        return torch.cat(parts).view(batch.shape[0], batch.shape[1]).cpu()

    return PerturbationCurves(fractions, target_probabilities(deleted), target_probabilities(inserted))
