"""medXGAN networks: generator G(z_a, z_p), discriminator D and encoder E, for 2D or 3D images.

Dravid et al., "medXGAN: Visual Explanations for Medical Classifiers through a Generative Latent Space",
CVPR Workshops 2022 (arXiv:2204.05376). The generator takes an anatomy code ``z_a`` and a pathology code ``z_p`` that is
exactly zero for the negative class, so ``G(z_a, 0)`` is the negative realisation of the anatomy ``z_a``.

Deviations from the official code, and why:

* the generator upsamples with nearest-neighbour resizing followed by a 3x3 convolution instead of strided transposed
  convolutions, which avoids checkerboard artefacts that would show up in difference maps;
* its output activation matches the classifier's preprocessing (sigmoid for images scaled to [0, 1]) instead of tanh;
* the discriminator returns logits (for hinge or logistic losses) and can use spectral normalisation and a class
  projection; the paper's discriminator is an unconditional sigmoid network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = ["MedXGANDiscriminator", "MedXGANEncoder", "MedXGANGenerator", "pathology_codes"]


def pathology_codes(labels: torch.Tensor, pathology_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pathology codes for ``labels``: exactly 0 where the label is 0, N(0, I) where it is 1 (the paper's scheme)."""
    labels = labels.reshape(-1)
    noise = torch.randn(labels.shape[0], pathology_dim, device=labels.device, generator=generator)
    return torch.where(labels.bool().unsqueeze(1), noise, torch.zeros_like(noise))


def _spatial_after(image_size: Sequence[int], factor: int, name: str) -> tuple[int, ...]:
    sizes = []
    for size in image_size:
        if size % factor or size < factor:
            raise ValueError(f"{name}: image_size {tuple(image_size)} must be a positive multiple of {factor}")
        sizes.append(size // factor)
    return tuple(sizes)


class MedXGANGenerator(nn.Module):
    """Generator ``G(z_a, z_p)`` mapping an anatomy code and a pathology code to an image.

    Args:
        spatial_dims: 2 or 3.
        out_channels: image channels.
        image_size: output size (an int for all axes, or one per axis); each must be divisible by 2**len(channels).
        anatomy_dim: size of z_a (paper: 1000 at 64x64).
        pathology_dim: size of z_p (paper: 100 at 64x64).
        channels: feature channels of each upsampling stage, coarse to fine.
        norm: normalisation after each convolution (a MONAI ``Norm`` name).
        output_activation: ``"sigmoid"`` for images in [0, 1], ``"tanh"`` for [-1, 1], ``None`` for unbounded.

    Example::

        generator = MedXGANGenerator(spatial_dims=2, image_size=64)
        labels = torch.tensor([0, 1])
        z_a, z_p = generator.sample_codes(labels)
        images = generator(z_a, z_p)            # (2, 1, 64, 64); z_p[0] is exactly 0
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        out_channels: int = 1,
        image_size: int | Sequence[int] = 64,
        anatomy_dim: int = 1000,
        pathology_dim: int = 100,
        channels: Sequence[int] = (256, 128, 64, 32),
        norm: str = "batch",
        output_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.anatomy_dim = anatomy_dim
        self.pathology_dim = pathology_dim
        self.image_size = ensure_tuple_rep(image_size, spatial_dims)
        self.start_size = _spatial_after(self.image_size, 2 ** len(channels), "MedXGANGenerator")
        self.start_channels = channels[0]
        conv, norm_layer = Conv[Conv.CONV, spatial_dims], Norm[norm, spatial_dims]
        self.project = nn.Linear(anatomy_dim + pathology_dim, channels[0] * math.prod(self.start_size))
        self.project_norm = nn.Sequential(norm_layer(channels[0]), nn.ReLU(inplace=True))
        stages = []
        previous = channels[0]
        for width in channels:
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(previous, width, kernel_size=3, padding=1, bias=False),
                norm_layer(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.upsample = nn.Sequential(*stages)
        self.head = conv(previous, out_channels, kernel_size=3, padding=1)
        activations = {"sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), None: nn.Identity()}
        if output_activation not in activations:
            raise ValueError(f"output_activation must be 'sigmoid', 'tanh' or None, not {output_activation!r}")
        self.output_activation = activations[output_activation]

    def sample_codes(
        self, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (z_a, z_p) for ``labels``: z_a ~ N(0, I); z_p as in :func:`pathology_codes`."""
        labels = labels.reshape(-1)
        z_a = torch.randn(labels.shape[0], self.anatomy_dim, device=labels.device, generator=generator)
        return z_a, pathology_codes(labels, self.pathology_dim, generator=generator)

    def forward(self, z_a: torch.Tensor, z_p: torch.Tensor) -> torch.Tensor:
        features = self.project(torch.cat([z_a, z_p], dim=1))
        features = self.project_norm(features.view(-1, self.start_channels, *self.start_size))
        return self.output_activation(self.head(self.upsample(features)))


class _DownsamplingTrunk(nn.Module):
    """Strided 4x4 convolutions with LeakyReLU, halving the size at each stage; returns flattened features."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        image_size: Sequence[int],
        channels: Sequence[int],
        norm: str | None,
        spectral_norm: bool,
        name: str,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            layer = conv(previous, width, kernel_size=4, stride=2, padding=1, bias=norm is None)
            layers.append(nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer)
            if norm is not None and index > 0:
                layers.append(Norm[norm, spatial_dims](width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            previous = width
        self.layers = nn.Sequential(*layers)
        self.features = previous * math.prod(_spatial_after(image_size, 2 ** len(channels), name))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).flatten(1)


class MedXGANDiscriminator(nn.Module):
    """Discriminator returning one real/fake logit per image, optionally class-conditional by projection.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        image_size: input size; each axis divisible by 2**len(channels).
        channels: feature channels of each downsampling stage.
        spectral_norm: spectral normalisation of every layer (Miyato et al. 2018).
        num_classes: 0 for an unconditional discriminator (the paper); 2 adds a projection term
            (Miyato and Koyama 2018) so that D judges "a real image of this class".

    Example::

        discriminator = MedXGANDiscriminator(image_size=64)
        logits = discriminator(torch.rand(4, 1, 64, 64))      # (4,)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 64,
        channels: Sequence[int] = (32, 64, 128, 256),
        spectral_norm: bool = True,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        sizes = ensure_tuple_rep(image_size, spatial_dims)
        self.trunk = _DownsamplingTrunk(
            spatial_dims, in_channels, sizes, channels, None, spectral_norm, "MedXGANDiscriminator"
        )
        linear = nn.Linear(self.trunk.features, 1)
        self.head = nn.utils.parametrizations.spectral_norm(linear) if spectral_norm else linear
        self.num_classes = num_classes
        self.class_embedding = None
        if num_classes > 0:
            embedding = nn.Embedding(num_classes, self.trunk.features)
            self.class_embedding = nn.utils.parametrizations.spectral_norm(embedding) if spectral_norm else embedding

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.trunk(images)
        logits = self.head(features).squeeze(1)
        if self.class_embedding is not None:
            if labels is None:
                raise ValueError("MedXGANDiscriminator: labels are required when num_classes > 0")
            logits = logits + (self.class_embedding(labels.reshape(-1).long()) * features).sum(dim=1)
        return logits


class MedXGANEncoder(nn.Module):
    """Encoder ``E(x) -> (z_a, z_p)`` that inverts the generator on real images (beyond the paper).

    Example::

        encoder = MedXGANEncoder(image_size=64, anatomy_dim=1000, pathology_dim=100)
        z_a, z_p = encoder(torch.rand(2, 1, 64, 64))
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 64,
        anatomy_dim: int = 1000,
        pathology_dim: int = 100,
        channels: Sequence[int] = (32, 64, 128, 256),
        norm: str = "instance",
        hidden: int = 512,
    ) -> None:
        super().__init__()
        sizes = ensure_tuple_rep(image_size, spatial_dims)
        self.trunk = _DownsamplingTrunk(spatial_dims, in_channels, sizes, channels, norm, False, "MedXGANEncoder")
        self.hidden = nn.Sequential(nn.Linear(self.trunk.features, hidden), nn.LeakyReLU(0.2, inplace=True))
        self.anatomy = nn.Linear(hidden, anatomy_dim)
        self.pathology = nn.Linear(hidden, pathology_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(self.trunk(images))
        return self.anatomy(hidden), self.pathology(hidden)
