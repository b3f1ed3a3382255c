"""Latent Shift (Cohen et al., "Gifsplanation via Latent Shift", MIDL 2021) on the medXGAN encoder and generator."""

from __future__ import annotations

import torch
from torch import nn

from medxgan_monai.explain.base import SaliencyExplainer, class_probability
from medxgan_monai.networks.classifier import floating, freeze

__all__ = ["LatentShiftExplainer"]


class LatentShiftExplainer(SaliencyExplainer):
    """Shift the image's latent code against the classifier's gradient and map what changes.

    For each image: z = E(x) (z_a and z_p together), x_0 = G(z), and d = -grad_z p(G(z)) / ||grad_z p(G(z))||, the
    direction that lowers the target-class probability fastest. Shifts z + lam * d are searched on the geometric grid
    ``search_start * 2**k`` (k < ``search_steps``) for the first one at which the classifier's decision flips
    (p < 0.5), or the largest; ``frames`` images between lam = 0 and that shift give the heatmap
    max_k |x_0 - x_k| (Cohen et al.'s ``max`` heatmap, the one their IoU table used). As in their code, x_0 (the
    reconstruction) is the reference rather than x, so reconstruction error is not attributed.

    Differences from the reference implementation (``ieee8023/latentshift``): a normalised gradient and a geometric
    grid instead of a step-by-step search in raw gradient units, and the decision flip as the stopping rule; both make
    the search independent of the gradient's scale and of the batch.

    Example::

        maps = LatentShiftExplainer(classifier, generator, encoder)(images)
    """

    name = "latentshift"

    def __init__(
        self,
        classifier: nn.Module,
        generator: nn.Module,
        encoder: nn.Module,
        search_start: float = 0.5,
        search_steps: int = 8,
        frames: int = 10,
        target: int = 1,
    ) -> None:
        super().__init__(classifier, target)
        self.generator = freeze(generator)
        self.encoder = freeze(encoder)
        self.search_start = search_start
        self.search_steps = search_steps
        self.frames = frames

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return floating(self.generator(*codes.split([self.generator.anatomy_dim, self.generator.pathology_dim], dim=1)))

    def attribute(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = floating(torch.cat(self.encoder(floating(images)), dim=1))
        codes.requires_grad_(True)
        reference = self._decode(codes)
        (gradient,) = torch.autograd.grad(class_probability(self.classifier, reference, self.target).sum(), codes)
        direction = -gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
        codes, reference = codes.detach(), reference.detach()
        batch = codes.shape[0]
        with torch.no_grad():
            grid = self.search_start * 2.0 ** torch.arange(self.search_steps, device=codes.device)
            probabilities = torch.stack(
                [
                    class_probability(self.classifier, self._decode(codes + lam * direction), self.target)
                    for lam in grid
                ],
                dim=1,
            )
            flipped = probabilities < 0.5
            # first flipping shift per image, else the largest one searched
            index = torch.where(
                flipped.any(1), flipped.float().argmax(1), torch.full_like(flipped[:, 0], len(grid) - 1)
            )
            shift = grid[index.long()].view(batch, 1)
            heatmap = torch.zeros_like(reference)
            for fraction in torch.linspace(0, 1, self.frames + 1, device=codes.device)[1:]:
                frame = self._decode(codes + fraction * shift * direction)
                heatmap = torch.maximum(heatmap, (frame - reference).abs())
        return heatmap
