"""Faithfulness of saliency maps to the classifier: deletion and insertion curves (Petsiuk et al., BMVC 2018, RISE)
and ROAD (Rong et al., ICML 2022).

A faithful map orders pixels by how much the classifier relies on them: deleting its top pixels first should make
the target-class probability fall fast (low deletion AUC), and inserting them first into a blurred copy should make
it rise fast (high insertion AUC). What a deleted pixel becomes (the *fill*) matters: zero does not remove a lesion
darker than the tissue, so deletion also runs with the image's mean or its blurred copy as fill. ROAD replaces the
removed pixels by a noisy linear imputation from their neighbours, which leaves no removal shape for the classifier
to react to, and removes the most (MoRF) or the least (LeRF) relevant pixels first.

Every curve is one computation: rank the pixels by the map, replace a growing set of them by a fill, ask the
classifier for the target-class probability.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import GaussianFilter
from scipy.sparse import csc_matrix, diags
from scipy.sparse.linalg import cg, spsolve
from torch import nn

from medxgan_monai.networks.classifier import class_probabilities

__all__ = [
    "FILLS",
    "ROAD_PERCENTAGES",
    "PerturbationCurves",
    "ROADCurves",
    "deletion_insertion",
    "noisy_linear_imputation",
    "road",
]

#: what a deleted pixel becomes: 0, the image's mean (per channel), or the image's Gaussian-blurred copy
FILLS = ("zero", "mean", "blur")

#: the percentages of pixels ROAD removes: 10% to 90% in steps of 20 (the ROAD paper steps by 10 and Quantus by 2 from
#: 1 to 99; five points keep ROAD within the evaluation's time budget: each point is one sparse solve per image)
ROAD_PERCENTAGES = (10, 30, 50, 70, 90)


class PerturbationCurves:
    """Deletion and insertion curves of a batch: ``fractions`` (K,), ``deletion`` and ``insertion`` (B, K) target-class
    probabilities, and their areas under the curve ``deletion_auc`` and ``insertion_auc`` (B,) (trapezoid rule over
    the fraction of pixels perturbed, so both lie in [0, 1]). ``fill`` is the deletion's fill; ``insertion`` is
    ``None`` when it was not asked for."""

    def __init__(
        self,
        fractions: torch.Tensor,
        deletion: torch.Tensor,
        insertion: torch.Tensor | None = None,
        fill: str | float = "zero",
    ) -> None:
        self.fractions, self.deletion, self.insertion, self.fill = fractions, deletion, insertion, fill

    @property
    def deletion_auc(self) -> torch.Tensor:
        return torch.trapezoid(self.deletion, self.fractions, dim=1)

    @property
    def insertion_auc(self) -> torch.Tensor:
        if self.insertion is None:
            raise ValueError("these curves were computed without insertion (insertion=False)")
        return torch.trapezoid(self.insertion, self.fractions, dim=1)


class ROADCurves:
    """ROAD curves of a batch: ``percentages`` (K,) of pixels removed, ``morf`` and ``lerf`` (B, K) target-class
    probabilities with the most / least relevant pixels removed first, and their normalised areas ``morf_auc`` and
    ``lerf_auc`` (B,): the trapezoid area over the removed fraction divided by the fraction range, so both lie in
    [0, 1] (MoRF: lower is better, LeRF: higher is better)."""

    def __init__(self, percentages: torch.Tensor, morf: torch.Tensor, lerf: torch.Tensor) -> None:
        self.percentages, self.morf, self.lerf = percentages, morf, lerf

    def _auc(self, curve: torch.Tensor) -> torch.Tensor:
        fractions = self.percentages / 100
        if len(fractions) == 1:
            return curve[:, 0]
        return torch.trapezoid(curve, fractions, dim=1) / (fractions[-1] - fractions[0])

    @property
    def morf_auc(self) -> torch.Tensor:
        return self._auc(self.morf)

    @property
    def lerf_auc(self) -> torch.Tensor:
        return self._auc(self.lerf)


def _check_shapes(images: torch.Tensor, maps: torch.Tensor) -> None:
    if maps.shape[0] != images.shape[0] or maps.shape[2:] != images.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} do not match images {tuple(images.shape)}")


def _salience_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(B, N) rank of each pixel in its map, 0 for the most salient (ties broken by pixel order)."""
    order = torch.argsort(maps.detach().float().flatten(1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return rank


def _top_pixels(ranks: torch.Tensor, counts: torch.Tensor, spatial: torch.Size) -> torch.Tensor:
    """(B, K, 1, *spatial) boolean: True for the ``counts[k]`` most salient pixels of each map."""
    selected = ranks.unsqueeze(1) < counts.view(1, -1, 1).to(ranks.device)
    return selected.view(ranks.shape[0], len(counts), 1, *spatial)


def _blurred(images: torch.Tensor, blur_sigma: float | None) -> torch.Tensor:
    """The images' Gaussian-blurred copy; ``blur_sigma`` defaults to 1/8 of the largest side (see
    :func:`deletion_insertion`)."""
    spatial = images.shape[2:]
    sigma = blur_sigma if blur_sigma is not None else max(spatial) / 8
    return GaussianFilter(len(spatial), sigma)(images.float())


def _fill_values(images: torch.Tensor, fill: str | float, blur_sigma: float | None) -> torch.Tensor:
    """(B, C, *spatial) values that deleted pixels take for ``fill``: one of :data:`FILLS` or a constant."""
    images = images.float()
    if not isinstance(fill, str):
        return torch.full_like(images, float(fill))
    if fill == "zero":
        return torch.zeros_like(images)
    if fill == "mean":
        return images.mean(dim=tuple(range(2, images.ndim)), keepdim=True).expand_as(images)
    if fill == "blur":
        return _blurred(images, blur_sigma)
    raise ValueError(f"unknown fill {fill!r}; one of {FILLS} or a number")


def _target_probabilities(classifier: nn.Module, batch: torch.Tensor, target: int, batch_size: int) -> torch.Tensor:
    """(B, K) target-class probabilities of the (B, K, C, *spatial) perturbed images, ``batch_size`` at a time."""
    flat = batch.flatten(0, 1)
    parts = [
        class_probabilities(classifier(flat[s : s + batch_size]))[:, target] for s in range(0, len(flat), batch_size)
    ]
    return torch.cat(parts).view(batch.shape[0], batch.shape[1]).cpu()


@torch.no_grad()
def deletion_insertion(
    classifier: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: int = 1,
    steps: int = 20,
    fill: str | float = "zero",
    blur_sigma: float | None = None,
    batch_size: int = 64,
    insertion: bool = True,
) -> PerturbationCurves:
    """Deletion and insertion curves of ``maps`` (B, 1, *spatial) for ``images`` (B, C, *spatial).

    At step i of ``steps``, the ``round(i / steps * N)`` most salient of the N pixels (ties broken by pixel order) are
    replaced by the ``fill`` (deletion) or copied from the image into a Gaussian-blurred copy of it (insertion). The
    fill is ``"zero"`` (the background of images scaled to [0, 1]; RISE's deletion), ``"mean"`` (the image's mean),
    ``"blur"`` (the same blurred copy insertion starts from) or a constant. The blur must erase the evidence, or
    insertion starts at the full score and measures nothing: ``blur_sigma`` defaults to 1/8 of the image's largest
    side (8 pixels at 64; on the demo positives RISE's 5 pixels at 224, scaled to 1.4 pixels at 64, left the mean
    positive probability at 0.97, 8 pixels brought it to 0.00001). The classifier sees B * (steps + 1) images per
    curve, ``batch_size`` at a time; ``insertion=False`` skips the insertion curve.

    Example::

        curves = deletion_insertion(classifier, images, maps)
        curves.deletion_auc, curves.insertion_auc      # (B,) each; lower / higher is better
        deletion_insertion(classifier, images, maps, fill="mean", insertion=False).deletion_auc
    """
    _check_shapes(images, maps)
    spatial = images.shape[2:]
    fractions = torch.linspace(0, 1, steps + 1)
    top = _top_pixels(_salience_ranks(maps), torch.round(fractions * spatial.numel()).long(), spatial)
    top = top.to(images.device)
    originals = images.float().unsqueeze(1)
    deleted = torch.where(top, _fill_values(images, fill, blur_sigma).unsqueeze(1), originals)
    deletion = _target_probabilities(classifier, deleted, target, batch_size)
    inserted = None
    if insertion:
        inserted = torch.where(top, originals, _blurred(images, blur_sigma).unsqueeze(1))
        inserted = _target_probabilities(classifier, inserted, target, batch_size)
    return PerturbationCurves(fractions, deletion, inserted, fill)


def _neighbour_weights(dims: int) -> dict[tuple[int, ...], float]:
    """Offset -> weight of the 3^dims - 1 neighbours: the separable kernel [1, 2, 1] x ... x [1, 2, 1] without its
    centre, normalised to sum 1: ROAD's 1/6 (direct) and 1/12 (diagonal) in 2D; 1/14, 1/28, 1/56 (face, edge, corner)
    in 3D. Symmetric, so the imputation reproduces a linear ramp exactly away from the border."""
    total = 4**dims - 2**dims
    return {
        offset: math.prod(2 if o == 0 else 1 for o in offset) / total
        for offset in itertools.product((-1, 0, 1), repeat=dims)
        if any(offset)
    }


def _linear_imputation(values: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``values`` (*spatial) float64 with every ``removed`` pixel the weighted mean of its in-image neighbours: one
    sparse linear system over the removed pixels (diagonal: the weights of the pixel's in-image neighbours; removed
    neighbours on the left-hand side, kept ones on the right), solved directly (SuperLU)."""
    shape = values.shape
    unknown = np.flatnonzero(removed)
    index = np.full(removed.size, -1, dtype=np.int64)
    index[unknown] = np.arange(len(unknown))
    coordinates = np.stack(np.unravel_index(unknown, shape))
    flat_values, flat_removed = values.reshape(-1), removed.reshape(-1)
    diagonal, rhs = np.zeros(len(unknown)), np.zeros(len(unknown))
    rows, columns, entries = [np.arange(len(unknown))], [np.arange(len(unknown))], []
    for offset, weight in _neighbour_weights(len(shape)).items():
        neighbour = coordinates + np.array(offset).reshape(-1, 1)
        inside = np.all((neighbour >= 0) & (neighbour < np.array(shape).reshape(-1, 1)), axis=0)
        source = np.flatnonzero(inside)
        target = np.ravel_multi_index(tuple(neighbour[:, inside]), shape)
        diagonal[source] += weight
        both_removed = flat_removed[target]
        rows.append(source[both_removed])
        columns.append(index[target[both_removed]])
        entries.append(np.full(both_removed.sum(), -weight))
        rhs[source[~both_removed]] += weight * flat_values[target[~both_removed]]  # each source once per offset
    matrix = csc_matrix(
        (np.concatenate([diagonal, *entries]), (np.concatenate(rows), np.concatenate(columns))),
        shape=(len(unknown), len(unknown)),
    )
    imputed = flat_values.copy()
    imputed[unknown] = spsolve(matrix, rhs) if len(shape) < 3 else _solve_3d(matrix, rhs, diagonal)
    return imputed.reshape(shape)


def _solve_3d(matrix, rhs: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """The 3D system by conjugate gradients with a Jacobi preconditioner: a direct factorisation of a 26-neighbour
    system fills in (a third of a 32^3 volume removed took minutes per solve); the matrix is symmetric positive
    definite (each removed voxel's neighbour weights on the diagonal, and at least one kept voxel in the image)."""
    preconditioner = diags(1.0 / diagonal)
    solution, info = cg(matrix, rhs, x0=rhs / diagonal, rtol=1e-13, atol=0.0, maxiter=10 * len(rhs), M=preconditioner)
    if info != 0:  # did not converge (not seen): the exact, slow solve
        return spsolve(matrix, rhs)
    return solution


@torch.no_grad()
def noisy_linear_imputation(
    images: torch.Tensor, removed: torch.Tensor, noise: float = 0.01, seed: int = 0
) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022): every removed pixel becomes the weighted mean of its
    in-image neighbours (8 in 2D: weight 1/6 direct, 1/12 diagonal; 26 in 3D, see :func:`_neighbour_weights`),
    solved as one sparse linear system over all removed pixels of an image and channel, plus Gaussian noise.

    Args:
        images: (B, C, *spatial) images, 2D or 3D (a 3D volume is one system of all its removed voxels: fine for
            small volumes, slow for large ones).
        removed: (B, 1, *spatial) boolean, True for the pixels to impute (the same for every channel). An image must
            keep at least one pixel: with none the system has no unique solution.
        noise: standard deviation of the noise, as a fraction of each image's intensity range (max - min); ROAD's
            default 0.01. 0 gives the plain linear imputation.
        seed: the noise is one field drawn from a generator seeded with ``seed`` and scaled per image, so an image's
            imputation does not depend on its batch, and maps compared on the same image see the same noise.
    """
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be (B, C, H, W) or (B, C, D, H, W), got {tuple(images.shape)}")
    if removed.shape[0] != images.shape[0] or removed.shape[2:] != images.shape[2:] or removed.shape[1] != 1:
        raise ValueError(f"removed {tuple(removed.shape)} does not match images {tuple(images.shape)}")
    removed = removed.detach().cpu().bool()
    if removed.flatten(1).all(1).any():
        raise ValueError("noisy linear imputation needs at least one kept pixel per image")
    values = images.detach().cpu().to(torch.float64)
    imputed = torch.stack(
        [
            torch.stack([torch.from_numpy(_linear_imputation(c.numpy(), r[0].numpy())) for c in image])
            for image, r in zip(values, removed, strict=True)
        ]
    )
    field = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    flat = values.flatten(1)
    scale = (noise * (flat.amax(1) - flat.amin(1))).view(-1, *[1] * (images.ndim - 1))
    noisy = torch.where(removed, imputed + scale * field, values)
    return noisy.to(device=images.device, dtype=images.dtype)


@torch.no_grad()
def road(
    classifier: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    target: int = 1,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 64,
) -> ROADCurves:
    """ROAD (Rong et al., ICML 2022): the target-class probability after removing the most relevant (MoRF) and the
    least relevant (LeRF) ``percentages`` of the pixels of ``maps`` (B, 1, *spatial) and imputing them with
    :func:`noisy_linear_imputation` (``noise``, ``seed``). ``round(p / 100 * N)`` pixels are removed at p%, ties
    broken by pixel order. The classifier sees 2 * B * len(percentages) images, ``batch_size`` at a time.

    Example::

        curves = road(classifier, images, maps)
        curves.morf_auc, curves.lerf_auc      # (B,) each; lower / higher is better
    """
    _check_shapes(images, maps)
    if not all(0 < p < 100 for p in percentages):
        raise ValueError(f"percentages must lie strictly between 0 and 100, got {list(percentages)}")
    spatial = images.shape[2:]
    pixels = spatial.numel()
    percent = torch.tensor([float(p) for p in percentages])
    counts = torch.round(percent / 100 * pixels).long()
    ranks = _salience_ranks(maps)
    most = _top_pixels(ranks, counts, spatial)
    least = _top_pixels(pixels - 1 - ranks, counts, spatial)  # the reversed order: least salient first
    removed = torch.cat([most, least], dim=1).flatten(0, 1)  # (B * 2K, 1, *spatial)
    repeated = images.float().repeat_interleave(2 * len(counts), dim=0)
    imputed = noisy_linear_imputation(repeated, removed.to(images.device), noise, seed)
    probabilities = _target_probabilities(
        classifier, imputed.view(images.shape[0], 2 * len(counts), *images.shape[1:]), target, batch_size
    )
    return ROADCurves(percent, probabilities[:, : len(counts)], probabilities[:, len(counts) :])
