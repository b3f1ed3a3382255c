"""Localization scores of saliency maps against ground-truth masks, per image.

Every function takes ``maps`` and ``masks`` of shape (B, 1, *spatial) (or (B, *spatial)), non-negative maps (use
:func:`medxgan_monai.explain.normalize_saliency` first) and binary masks, and returns a (B,) tensor. Images with an
empty mask get NaN: there is nothing to find.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.filters import threshold_otsu
from sklearn.metrics import roc_auc_score

__all__ = ["otsu_iou", "pixel_auroc", "pointing_game", "relevance_mass", "top_k_iou"]


def _flatten(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same shape")
    return maps.detach().float().flatten(1), masks.detach().flatten(1) > 0.5


def _nan_where_empty(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.where(masks.any(1), values, torch.full_like(values, float("nan")))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 when the map's maximum lies inside the mask, else 0 (Zhang et al., ECCV 2016, without tolerance margin).

    Ties for the maximum count as a hit only if every tied pixel is inside the mask, so a constant map scores 0.
    """
    values, inside = _flatten(maps, masks)
    peak = values == values.amax(1, keepdim=True)
    hit = (peak & ~inside).sum(1) == 0
    return _nan_where_empty(hit.float(), inside)


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of the map's total mass inside the mask (energy-based pointing game, Wang et al. 2020;
    relevance mass accuracy, Arras et al. 2022). 0 for an all-zero map."""
    values, inside = _flatten(maps, masks)
    total = values.sum(1)
    mass = (values * inside).sum(1) / total.clamp_min(1e-12)
    return _nan_where_empty(torch.where(total > 0, mass, torch.zeros_like(mass)), inside)


def top_k_iou(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU between the mask and the map's k highest pixels, k = the mask's area (Cohen et al. 2021's oracle-area IoU).

    Ties at the k-th value are broken by pixel order (``torch.topk``), so exactly k pixels are kept.
    """
    values, inside = _flatten(maps, masks)
    scores = torch.zeros(values.shape[0])
    for index, (value, truth) in enumerate(zip(values, inside, strict=True)):
        area = int(truth.sum())
        if area == 0:
            continue
        selected = torch.zeros_like(truth)
        selected[torch.topk(value, area).indices] = True
        scores[index] = (selected & truth).sum() / (selected | truth).sum()
    return _nan_where_empty(scores, inside)


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of the map's values as a pixel-wise detector of the mask (scikit-learn's
    ``roc_auc_score``; ties count one half). 0.5 is chance, 1 a map whose every mask pixel outranks every other pixel.
    NaN when the mask is empty or covers the whole image (no negatives to rank against)."""
    values, inside = _flatten(maps, masks)
    scores = torch.full((values.shape[0],), float("nan"))
    for index, (value, truth) in enumerate(zip(values.numpy(), inside.numpy(), strict=True)):
        if 0 < truth.sum() < truth.size:
            scores[index] = float(roc_auc_score(truth, value))
    return scores


def otsu_iou(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU between the mask and the map thresholded at its own Otsu threshold (Otsu 1979, scikit-image's
    ``threshold_otsu``), the pixels strictly above it kept: a threshold-free segmentation of the map. A constant map
    keeps no pixel and scores 0."""
    values, inside = _flatten(maps, masks)
    scores = torch.zeros(values.shape[0])
    for index, (value, truth) in enumerate(zip(values.numpy(), inside.numpy(), strict=True)):
        if value.max() > value.min():
            selected = value > threshold_otsu(value)
            scores[index] = float(np.logical_and(selected, truth).sum() / np.logical_or(selected, truth).sum())
    return _nan_where_empty(scores, inside)
