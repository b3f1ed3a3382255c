"""Synthetic tumour-like lesions with exact masks, drawn onto 2D anatomy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["LesionSettings", "acquisition_contrast", "draw_lesions", "elastic_displacement", "smooth_noise"]


@dataclass(frozen=True)
class LesionSettings:
    """Ranges that lesions are drawn from.

    Attributes:
        area_fraction: (min, max) area of one lesion as a fraction of the field of view; with several lesions the
            upper bound is divided by their number, so the total never exceeds the max.
        max_lesions: each positive image gets 1..max_lesions lesions.
        contrast: (min, max) intensity change relative to the mean brain intensity, from subtle to obvious.
        hyper_probability: chance that a lesion is brighter (else darker) than the tissue it replaces.
        necrotic_core_probability: chance that a hyper-intense lesion has a dark core (ring-like enhancement).
    """

    area_fraction: tuple[float, float] = (0.03, 0.15)
    max_lesions: int = 3
    contrast: tuple[float, float] = (0.2, 0.6)
    hyper_probability: float = 0.5
    necrotic_core_probability: float = 0.3

    def __post_init__(self) -> None:
        lo, hi = self.area_fraction
        if not 0 < lo <= hi < 1:
            raise ValueError(f"area_fraction must satisfy 0 < min <= max < 1, not {self.area_fraction}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, not {self.max_lesions}")
        if not 0 < self.contrast[0] <= self.contrast[1]:
            raise ValueError(f"contrast must satisfy 0 < min <= max, not {self.contrast}")


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def elastic_displacement(rng: np.random.Generator, size: int, amplitude_mm: float) -> np.ndarray:
    """A smooth 2D displacement field ``(2, size, size)`` in mm (each component unit-variance smooth noise scaled to
    ``amplitude_mm / 2``): the demo benchmarks' elastic warp of the anatomy."""
    return np.stack([smooth_noise(rng, (size, size), sigma=size / 8) for _ in range(2)]) * amplitude_mm / 2


def acquisition_contrast(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma_range: tuple[float, float],
    gain_range: tuple[float, float],
    field_strength: float,
) -> np.ndarray:
    """The demo benchmarks' acquisition, before noise, equal for both classes: a gamma, a gain and a smooth
    multiplicative field (a 4 x 4 log-normal grid interpolated cubically over the square ``image``)."""
    size = image.shape[0]
    image = np.clip(image, 0, None) ** rng.uniform(*gamma_range)
    image = image * rng.uniform(*gain_range)
    coarse = rng.standard_normal((4, 4)) * field_strength
    return image * np.exp(ndimage.zoom(coarse, size / 4, order=3, mode="nearest")[:size, :size])


def perturbed_ellipse(
    rng: np.random.Generator, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The in-plane frame of an irregular blob, from each pixel's offsets ``first`` and ``second`` (any shape) to its
    centre: the ellipse coordinates ``u`` and ``v`` (a random tilt; ``v`` stretched by ``1 / aspect``), the boundary
    perturbed by low harmonics of the polar angle, and the aspect (0.65..1). Shared by 2D and 3D lesions."""
    aspect = rng.uniform(0.65, 1.0)
    tilt = rng.uniform(0, np.pi)
    u = first * np.cos(tilt) + second * np.sin(tilt)
    v = (-first * np.sin(tilt) + second * np.cos(tilt)) / aspect
    theta = np.arctan2(v, u)
    boundary = np.ones_like(theta)
    for harmonic in range(2, 6):
        boundary += rng.uniform(0, 0.22 / harmonic) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return u, v, boundary, aspect


def _lesion_shape(rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    """An irregular blob: an ellipse whose boundary is perturbed by low harmonics and smooth noise."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    u, v, boundary, aspect = perturbed_ellipse(rng, rows - centre[0], cols - centre[1])
    # the ellipse shrinks the area by `aspect`; compensate so that the drawn area matches the requested one
    rho = np.hypot(u, v) / (radius / np.sqrt(aspect))
    return rho + 0.12 * smooth_noise(rng, shape, sigma=max(radius / 3, 1.0)) < boundary


def lesion_change(
    blob: np.ndarray,
    rng: np.random.Generator,
    settings: LesionSettings,
    brain_level: float,
    sampling: tuple[float, ...] | None = None,
    texture_sigma: float | tuple[float, ...] = 1.2,
) -> tuple[np.ndarray, bool, float]:
    """The signed intensity change of a lesion on ``blob`` (2D or 3D): hyper- or hypointense by a contrast relative to
    ``brain_level``, a ramp from the edge inwards (distances in pixels; ``sampling`` per axis), texture, and for a
    hyperintense lesion sometimes a necrotic core. Returns the change, whether it is hyperintense and its contrast."""
    hyper = bool(rng.random() < settings.hyper_probability)
    contrast = rng.uniform(*settings.contrast)
    # a ramp from the edge inwards keeps borders plausible while the mask stays exact
    depth = ndimage.distance_transform_edt(blob, sampling=sampling)
    ramp = np.clip(0.45 + 0.55 * depth / 2.0, 0, 1)
    texture = np.clip(1 + 0.3 * smooth_noise(rng, blob.shape, sigma=texture_sigma), 0.4, 1.6)
    change = contrast * brain_level * ramp * texture
    if hyper and rng.random() < settings.necrotic_core_probability:
        core = depth > 0.55 * depth.max()
        change = np.where(core, -0.6 * change, change)
    return (1.0 if hyper else -1.0) * change, hyper, float(contrast)


def draw_lesions(
    anatomy: np.ndarray, brain: np.ndarray, rng: np.random.Generator, settings: LesionSettings
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Insert 1..max_lesions lesions inside ``brain`` and return the new image, the exact mask and lesion records.

    The mask holds exactly the pixels each lesion was drawn on. Intensities stay within the anatomy's own range, so
    the image maximum and minimum carry no information about the label.
    """
    shape = anatomy.shape
    image = anatomy.astype(np.float64).copy()
    mask = np.zeros(shape, dtype=bool)
    fov_area = shape[0] * shape[1]
    brain_level = float(anatomy[brain].mean()) if brain.any() else float(anatomy.mean())
    low, high = float(anatomy.min()), float(anatomy.max())
    n_lesions = int(rng.integers(1, settings.max_lesions + 1))
    upper = max(settings.area_fraction[0], settings.area_fraction[1] / n_lesions)
    inside = ndimage.distance_transform_edt(brain)
    records = []
    for _ in range(n_lesions):
        area = np.exp(rng.uniform(np.log(settings.area_fraction[0]), np.log(upper))) * fov_area
        radius = np.sqrt(area / np.pi)
        candidates = np.argwhere(inside >= 0.5 * radius)
        if len(candidates) == 0:
            candidates = np.argwhere(inside >= inside.max() * 0.8)
        blob = np.zeros(shape, bool)
        for _attempt in range(8):
            centre = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, size=2)
            blob = _lesion_shape(rng, shape, centre, radius) & brain & ~mask
            if blob.sum() >= 0.6 * area:
                break
        if not blob.any():
            continue
        change, hyper, contrast = lesion_change(blob, rng, settings, brain_level)
        image[blob] = np.clip(image[blob] + change[blob], low, high)
        mask |= blob
        records.append(
            {
                "area_fraction": round(float(blob.sum()) / fov_area, 5),
                "polarity": "hyper" if hyper else "hypo",
                "contrast": round(float(contrast), 4),
                "centre_rc": [round(float(c), 2) for c in centre],
            }
        )
    return image, mask, records
