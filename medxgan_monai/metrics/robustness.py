"""Robustness of saliency maps to small input perturbations, per image.

Three perturbations of images scaled to [0, 1], each explained with one call of ``explain(images) -> {method: maps}``
(every method at once, so methods that share work, e.g. medXGAN's inversion, share it here too):

- **uniform noise of radius r** and the *max-sensitivity* of Yeh et al. (NeurIPS 2019): per image, the largest
  ||Phi(x + delta) - Phi(x)||_F / ||Phi(x)||_F over ``samples`` draws of delta ~ U[-r, r] per pixel (Quantus'
  ``MaxSensitivity`` with its uniform perturbation and Frobenius norms; the images are not clipped back to [0, 1], as
  there). Lower is more stable; 0 for a map that ignores the input. With few samples it is a lower bound of the
  maximum over the ball.
- **Gaussian noise at a signal-to-noise ratio** (dB), as medXGAN's paper frames robustness (Dravid et al. 2022):
  sigma = std(x) / 10^(SNR / 20), the image's standard deviation over its pixels. The noisy map's Spearman rank
  correlation with the clean map, and its localization against the mask (pointing game, relevance mass, top-|GT|
  IoU).
- **rigid integer shifts** of s pixels along every spatial axis (zero fill; the sign per image and axis drawn from
  the seed): a map should move with the image. The shifted image's map shifted back, correlated (Spearman) with the
  clean map over the pixels inside the image in both frames, and the shifted image's map localized against the
  shifted mask.

Maps are compared as the explainers return them (normalized: abs / max). Every draw comes from a generator seeded
with ``seed`` and the perturbation (kind, size), so one perturbation's values do not depend on which others run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medxgan_monai.metrics.localization import pointing_game, relevance_mass, top_k_iou
from medxgan_monai.metrics.sanity import rank_correlation

__all__ = [
    "CLEAN",
    "LOCALIZATION",
    "MEASURES",
    "PERTURBATIONS",
    "RobustnessMeasure",
    "gaussian_noise",
    "max_sensitivity",
    "noise_sigma",
    "noise_stability",
    "robustness_test",
    "shift",
    "shift_offsets",
    "shift_stability",
    "uniform_noise",
]

Explain = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]

#: the perturbation kinds, in report order, and the unit of their size
PERTURBATIONS = {"uniform": "radius", "gaussian": "SNR (dB)", "shift": "pixels"}
#: the kind of the rows of the clean maps' localization (size 0), the reference of the perturbed localization
CLEAN = "clean"
#: localization of a map against a mask, per image (B,)
LOCALIZATION: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "pointing_game": pointing_game,
    "relevance_mass": relevance_mass,
    "top_k_iou": top_k_iou,
}


@dataclass(frozen=True)
class RobustnessMeasure:
    """One measure of the robustness test: name, title and better direction (for reports and charts)."""

    name: str
    title: str
    higher_is_better: bool


#: every measure a robustness row may hold
MEASURES = {
    m.name: m
    for m in (
        RobustnessMeasure("max_sensitivity", "max-sensitivity", False),
        RobustnessMeasure("spearman", "Spearman with clean map", True),
        RobustnessMeasure("pointing_game", "pointing game", True),
        RobustnessMeasure("relevance_mass", "relevance mass", True),
        RobustnessMeasure("top_k_iou", "top-|GT| IoU", True),
    )
}


def _generator(seed: int, kind: str, size: float) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the perturbation, independent of the other perturbations run."""
    key = (list(PERTURBATIONS).index(kind), round(float(size) * 1_000_000))
    state = np.random.SeedSequence(seed, spawn_key=[k % 2**32 for k in key]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % 2**63))


def _explain(explain: Explain, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.enable_grad():  # the explainers differentiate; the end of an evaluator's epoch may be in no_grad
        return {method: maps.detach().float().cpu() for method, maps in explain(images).items()}


def uniform_noise(images: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` + delta, delta ~ U[-radius, radius] independently per pixel (not clipped)."""
    delta = (torch.rand(images.shape, generator=generator, dtype=torch.float64) * 2 - 1) * radius
    return images + delta.to(images.device, images.dtype)


def noise_sigma(images: torch.Tensor, snr_db: float) -> torch.Tensor:
    """(B,) standard deviation of the Gaussian noise that gives each image the signal-to-noise ratio ``snr_db``:
    std(x) / 10^(SNR / 20), std over the image's pixels (all channels)."""
    return images.detach().double().flatten(1).std(1).cpu() / 10 ** (snr_db / 20)


def gaussian_noise(images: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` + N(0, sigma^2) per pixel, sigma = :func:`noise_sigma` of each image (not clipped)."""
    sigma = noise_sigma(images, snr_db).view(-1, *[1] * (images.ndim - 1))
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float64) * sigma
    return images + noise.to(images.device, images.dtype)


def shift(tensors: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each (C, *spatial) item of ``tensors`` translated by its integer ``offsets`` (B, spatial dims) pixels, the
    pixels that enter filled with 0 (nothing wraps around)."""
    spatial = tensors.shape[2:]
    if offsets.shape != (tensors.shape[0], len(spatial)):
        raise ValueError(f"offsets {tuple(offsets.shape)} must be (batch, {len(spatial)})")
    shifted = torch.zeros_like(tensors)
    for index, offset in enumerate(offsets.tolist()):
        source, target = [slice(None)], [slice(None)]
        for step, length in zip(offset, spatial, strict=True):
            step = int(step)
            if abs(step) >= length:
                source, target = None, None
                break
            source.append(slice(max(0, -step), length - max(0, step)))
            target.append(slice(max(0, step), length - max(0, -step)))
        if source is not None:
            shifted[index][tuple(target)] = tensors[index][tuple(source)]
    return shifted


def _valid_region(maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, C, *(spatial - |offset|)): the pixels of each map (in the clean frame) whose shifted position is inside
    the image, i.e. the region both frames see. Every item's offsets have the same magnitudes, so one shape."""
    crops = []
    for item, offset in zip(maps, offsets.tolist(), strict=True):
        region = [slice(None)]
        for step, length in zip(offset, maps.shape[2:], strict=True):
            region.append(slice(max(0, -int(step)), length - max(0, int(step))))
        crops.append(item[tuple(region)])
    return torch.stack(crops)


def _localization(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: function(maps, masks) for name, function in LOCALIZATION.items()}


def max_sensitivity(
    explain: Explain,
    images: torch.Tensor,
    radius: float,
    samples: int = 3,
    seed: int = 0,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per method, the (B,) max-sensitivity at ``radius``: the largest relative Frobenius change of the map over
    ``samples`` uniform perturbations (one ``explain`` call each). NaN where the clean map is all zero (nothing to
    be relative to). ``reference``: the clean maps, if already computed."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    reference = dict(reference) if reference is not None else _explain(explain, images)
    generator = _generator(seed, "uniform", radius)
    norms = {method: maps.flatten(1).norm(dim=1) for method, maps in reference.items()}
    changes: dict[str, list[torch.Tensor]] = {method: [] for method in reference}
    for _ in range(samples):
        perturbed = _explain(explain, uniform_noise(images, radius, generator))
        for method, maps in reference.items():
            changes[method].append((perturbed[method] - maps).flatten(1).norm(dim=1) / norms[method])
    return {method: torch.stack(values).amax(0) for method, values in changes.items()}


def noise_stability(
    explain: Explain,
    images: torch.Tensor,
    masks: torch.Tensor,
    snr_db: float,
    seed: int = 0,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, per measure (B,): ``spearman`` of the map of the noisy image (Gaussian noise at ``snr_db``, see
    :func:`gaussian_noise`) with the clean map, and its :data:`LOCALIZATION` against ``masks`` (B, 1, *spatial)."""
    reference = dict(reference) if reference is not None else _explain(explain, images)
    noisy = _explain(explain, gaussian_noise(images, snr_db, _generator(seed, "gaussian", snr_db)))
    masks = masks.detach().float().cpu()
    return {
        method: {"spearman": rank_correlation(noisy[method], maps), **_localization(noisy[method], masks)}
        for method, maps in reference.items()
    }


def shift_offsets(batch: int, pixels: int, spatial_dims: int, seed: int = 0) -> torch.Tensor:
    """(B, spatial dims) offsets of ``pixels`` along every axis, each sign drawn per image and axis from ``seed``."""
    signs = torch.randint(0, 2, (batch, spatial_dims), generator=_generator(seed, "shift", pixels)) * 2 - 1
    return signs * int(pixels)


def shift_stability(
    explain: Explain,
    images: torch.Tensor,
    masks: torch.Tensor,
    pixels: int,
    seed: int = 0,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, per measure (B,) after shifting each image by ``pixels`` along every axis
    (:func:`shift_offsets`, zero fill): ``spearman`` of the shifted image's map shifted back with the clean map over
    the pixels valid in both frames, and the shifted image's map's :data:`LOCALIZATION` against the shifted mask."""
    pixels = int(pixels)
    if not 0 < pixels < min(images.shape[2:]):
        raise ValueError(f"a shift must be between 1 and {min(images.shape[2:]) - 1} pixels, got {pixels}")
    reference = dict(reference) if reference is not None else _explain(explain, images)
    offsets = shift_offsets(images.shape[0], pixels, images.ndim - 2, seed)
    shifted = _explain(explain, shift(images, offsets.to(images.device)))
    shifted_masks = shift(masks.detach().float().cpu(), offsets)
    results = {}
    for method, maps in reference.items():
        back = shift(shifted[method], -offsets)
        correlation = rank_correlation(_valid_region(back, offsets), _valid_region(maps, offsets))
        results[method] = {"spearman": correlation, **_localization(shifted[method], shifted_masks)}
    return results


def robustness_test(
    explain: Explain,
    images: torch.Tensor,
    masks: torch.Tensor,
    radii: Sequence[float] = (0.02, 0.1),
    snr_db: Sequence[float] = (20.0, 10.0),
    shifts: Sequence[int] = (2, 4, 8),
    samples: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Every perturbation of ``images`` (B, C, *spatial) in [0, 1] with ``masks`` (B, 1, *spatial): one row per
    method, kind, size and image: ``{"method", "kind", "size", "image", <measure>: value, ...}``.

    Kinds (:data:`PERTURBATIONS`): ``clean`` (size 0: the clean maps' localization, the reference of the others),
    ``uniform`` per radius (``max_sensitivity``, ``samples`` draws), ``gaussian`` per SNR in dB and ``shift`` per
    pixel count (``spearman`` and the localization measures). ``explain`` is called 1 + len(radii) * samples +
    len(snr_db) + len(shifts) times, each on the whole batch.

    Example::

        rows = robustness_test(explainers.maps, images, masks, radii=[0.02], snr_db=[10], shifts=[4])
        [r["max_sensitivity"] for r in rows if r["method"] == "ig" and r["kind"] == "uniform"]
    """
    reference = _explain(explain, images)
    masks = (masks.detach().float().cpu() > 0.5).float()
    results: list[tuple[str, float, dict[str, dict[str, torch.Tensor]]]] = [
        (CLEAN, 0.0, {method: _localization(maps, masks) for method, maps in reference.items()})
    ]
    for radius in radii:
        sensitivity = max_sensitivity(explain, images, radius, samples, seed, reference)
        results.append(("uniform", float(radius), {m: {"max_sensitivity": v} for m, v in sensitivity.items()}))
    for snr in snr_db:
        results.append(("gaussian", float(snr), noise_stability(explain, images, masks, snr, seed, reference)))
    for pixels in shifts:
        results.append(("shift", float(pixels), shift_stability(explain, images, masks, pixels, seed, reference)))
    rows = []
    for method in reference:
        for kind, size, per_method in results:
            measures = per_method[method]
            for image in range(images.shape[0]):
                row = {"method": method, "kind": kind, "size": size, "image": image}
                row.update({name: float(values[image]) for name, values in measures.items()})
                rows.append(row)
    return rows
