"""Deletion/insertion (every fill), ROAD and its imputation, counterfactual validity and the randomization test on
hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medxgan_monai.metrics import (
    ROADCurves,
    cascading_randomization,
    counterfactual_validity,
    deletion_insertion,
    noisy_linear_imputation,
    randomization_layers,
    rank_correlation,
    road,
)


class MeanIntensityClassifier(nn.Module):
    """Positive-class probability = the image's mean intensity (one logit)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.logit(images.flatten(1).mean(1, keepdim=True).clamp(1e-6, 1 - 1e-6))


def test_deletion_curve_by_hand():
    image = torch.tensor([[[[0.8, 0.4], [0.2, 0.6]]]])
    curves = deletion_insertion(MeanIntensityClassifier(), image, image, steps=4)
    # deleting 0.8, then 0.6, 0.4, 0.2: remaining sums 2.0, 1.2, 0.6, 0.2, 0 over four pixels
    assert torch.allclose(curves.deletion[0], torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=1e-5)
    assert math.isclose(curves.deletion_auc.item(), 0.25 * (0.25 + 0.3 + 0.15 + 0.05), rel_tol=1e-4)
    assert torch.allclose(curves.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    # with a negligible blur the inserted image is the image at every step
    sharp = deletion_insertion(MeanIntensityClassifier(), image, image, steps=4, blur_sigma=1e-3)
    assert torch.allclose(sharp.insertion, torch.full((1, 5), 0.5), atol=1e-4)


def test_a_faithful_order_beats_its_reverse():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 8, 8)
    good = deletion_insertion(MeanIntensityClassifier(), images, images, steps=8)
    bad = deletion_insertion(MeanIntensityClassifier(), images, 1 - images, steps=8)
    assert (good.deletion_auc < bad.deletion_auc).all() and (good.insertion_auc > bad.insertion_auc).all()
    assert torch.allclose(good.insertion[:, -1], images.flatten(1).mean(1), atol=1e-5), "all inserted: the image"


def test_counterfactual_validity():
    validity = counterfactual_validity(torch.tensor([0.9, 0.9, 0.2]), torch.tensor([0.1, 0.7, 0.1]))
    assert validity[:2].tolist() == [1.0, 0.0] and math.isnan(validity[2].item())


def test_rank_correlation():
    ramp = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert rank_correlation(ramp, ramp * 10).tolist() == [1.0]
    assert rank_correlation(ramp, -ramp).tolist() == [-1.0]
    assert rank_correlation(ramp, torch.ones_like(ramp)).tolist() == [0.0], "a constant map has no ranking"


def _gradient_of(network: nn.Module):
    def explain(images: torch.Tensor) -> torch.Tensor:
        images = images.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(network(images)[:, 1].sum(), images)
        return {"gradient": gradient.abs()}

    return explain


def test_cascading_randomization_separates_model_from_image_and_restores_weights():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    assert randomization_layers(network) == ["1", "3"], "parametrised leaves above the requested depth"
    trained = {k: v.clone() for k, v in network.state_dict().items()}
    images = torch.rand(4, 1, 4, 4)
    layers, correlations = cascading_randomization(network, _gradient_of(network), images)
    assert layers == ["3", "1"] and correlations["gradient"].shape == (2, 4)
    assert correlations["gradient"][-1].abs().mean() < 0.6, "a fully random network gives an unrelated gradient"
    assert all(torch.equal(trained[k], v) for k, v in network.state_dict().items()), "weights restored"
    # an 'explanation' that only shows the image passes nothing of the model: correlation stays 1
    _, image_only = cascading_randomization(network, lambda x: {"image": x.abs()}, images)
    assert torch.allclose(image_only["image"], torch.ones(2, 4))


def test_deletion_fills_by_hand():
    image = torch.tensor([[[[0.8, 0.4], [0.2, 0.6]]]])
    # the image's mean 0.5 replaces 0.8, then 0.6, 0.4, 0.2: means 0.425, 0.4, 0.425 and, all replaced, 0.5
    mean = deletion_insertion(MeanIntensityClassifier(), image, image, steps=4, fill="mean", insertion=False)
    assert torch.allclose(mean.deletion[0], torch.tensor([0.5, 0.425, 0.4, 0.425, 0.5]), atol=1e-5)
    assert mean.insertion is None
    constant = deletion_insertion(MeanIntensityClassifier(), image, image, steps=4, fill=0.25, insertion=False)
    assert torch.allclose(constant.deletion[0, -1], torch.tensor(0.25), atol=1e-5), "every pixel set to the constant"
    blur = deletion_insertion(MeanIntensityClassifier(), image, image, steps=4, fill="blur", insertion=False)
    zero = deletion_insertion(MeanIntensityClassifier(), image, image, steps=4)
    assert torch.equal(blur.deletion[:, 0], zero.deletion[:, 0]), "nothing deleted yet: the image itself"
    with pytest.raises(ValueError, match="insertion=False"):
        _ = mean.insertion_auc
    with pytest.raises(ValueError, match="unknown fill"):
        deletion_insertion(MeanIntensityClassifier(), image, image, steps=4, fill="noise")


class DarkSpotClassifier(nn.Module):
    """P(lesion) rises as the 4x4 square at rows and columns 6..9 gets darker than 0.5 (one logit)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20 * (0.5 - images[:, :, 6:10, 6:10].flatten(1).mean(1, keepdim=True))


def test_zero_fill_does_not_remove_a_dark_lesion_the_mean_and_blur_fills_do():
    image = torch.full((1, 1, 16, 16), 0.8)
    image[:, :, 6:10, 6:10] = 0.1  # a dark lesion on bright tissue
    lesion_map = torch.zeros_like(image)
    lesion_map[:, :, 6:10, 6:10] = 1.0
    auc = {
        fill: deletion_insertion(
            DarkSpotClassifier(), image, lesion_map, steps=16, fill=fill, insertion=False
        ).deletion_auc.item()
        for fill in ("zero", "mean", "blur")
    }
    # zeroing the lesion leaves it dark: P(lesion) stays ~1 along the whole curve
    assert auc["zero"] > 0.99
    # the image's mean (0.76) or its blurred copy (brighter than the lesion) take the lesion away at the first step
    assert auc["mean"] < 0.1 and auc["blur"] < auc["zero"] - 0.5, auc


def _ramp(shape: tuple[int, ...]) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    return (0.3 + sum((0.01 * (i + 2)) * a for i, a in enumerate(axes))).view(1, 1, *shape)


def _interior_removed(shape: tuple[int, ...], fraction: float, seed: int = 0) -> torch.Tensor:
    removed = torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed)) < fraction
    border = torch.ones(shape, dtype=torch.bool)
    border[(slice(1, -1),) * len(shape)] = False
    return removed & ~border


def test_linear_imputation_reproduces_a_linear_ramp_in_2d_and_3d():
    # symmetric neighbour weights average a linear function to its centre value: exact away from the border
    for shape in ((12, 10), (6, 7, 5)):
        ramp, removed = _ramp(shape), _interior_removed(shape, 0.7)
        assert removed.sum() > 10
        imputed = noisy_linear_imputation(ramp, removed, noise=0.0)
        torch.testing.assert_close(imputed, ramp, rtol=0, atol=1e-12)


def _direct_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's system written out pixel by pixel (weights 1/6 direct, 1/12 diagonal, in-image neighbours only)."""
    height, width = image.shape
    unknown = list(zip(*np.nonzero(removed), strict=True))
    index = {pixel: i for i, pixel in enumerate(unknown)}
    matrix, rhs = np.zeros((len(unknown), len(unknown))), np.zeros(len(unknown))
    for i, (y, x) in enumerate(unknown):
        for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
            if 0 <= y + dy < height and 0 <= x + dx < width:
                weight = 1 / 6 if 0 in (dy, dx) else 1 / 12
                matrix[i, i] += weight
                if removed[y + dy, x + dx]:
                    matrix[i, index[(y + dy, x + dx)]] -= weight
                else:
                    rhs[i] += weight * image[y + dy, x + dx]
    result = image.copy()
    result[tuple(np.array(unknown).T)] = np.linalg.solve(matrix, rhs)
    return result


def test_noisy_linear_imputation_solves_roads_system_and_adds_seeded_noise():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 1, 9, 11, generator=generator, dtype=torch.float64)
    removed = torch.rand(3, 1, 9, 11, generator=generator) < torch.tensor([0.2, 0.6, 0.95]).view(3, 1, 1, 1)
    plain = noisy_linear_imputation(images, removed, noise=0.0)
    for image, mask, result in zip(images, removed, plain, strict=True):  # borders and corners included
        expected = _direct_imputation(image[0].numpy(), mask[0].numpy())
        np.testing.assert_allclose(result[0].numpy(), expected, rtol=0, atol=1e-10)

    noisy = noisy_linear_imputation(images, removed)
    assert torch.equal(noisy[~removed], images[~removed]), "kept pixels stay"
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(3, 1, 1, 1)
    deviation = ((noisy - plain) / span)[removed]
    assert 0.007 < float(deviation.std()) < 0.013, "noise: 0.01 of the image's range"
    assert torch.equal(noisy_linear_imputation(images, removed), noisy), "seeded"
    assert torch.equal(noisy_linear_imputation(images[1:2], removed[1:2]), noisy[1:2]), "independent of the batch"
    assert not torch.equal(noisy_linear_imputation(images, removed, seed=1), noisy)
    with pytest.raises(ValueError, match="kept pixel"):
        noisy_linear_imputation(images, torch.ones_like(removed))


class BrightSquareClassifier(nn.Module):
    """P(positive) rises with the mean of the 6x6 square at rows and columns 5..10 above 0.5 (one logit): the only
    evidence in the image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20 * (images[:, :, 5:11, 5:11].flatten(1).mean(1, keepdim=True) - 0.5)


def test_road_removing_the_evidence_first_drops_faster_than_a_random_order():
    image = torch.full((1, 1, 16, 16), 0.2)
    image[:, :, 5:11, 5:11] = 0.9
    pointing = torch.zeros_like(image)
    pointing[:, :, 5:11, 5:11] = 1.0
    pointing += 0.01 * torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    random_map = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    percentages = (10, 30, 50, 70, 90)
    good = road(BrightSquareClassifier(), image, pointing, percentages=percentages)
    random = road(BrightSquareClassifier(), image, random_map, percentages=percentages)
    assert good.morf.shape == good.lerf.shape == (1, 5) and good.percentages.tolist() == list(percentages)
    # 10% = 26 pixels of the 36-pixel square, imputed from dim surroundings: the evidence is gone at once
    assert good.morf[0, 1:].max() < 0.05 and good.morf_auc.item() < random.morf_auc.item() - 0.3
    # the least relevant 90% leave the square: the evidence stays
    assert good.lerf[0].min() > 0.95 and good.lerf_auc.item() > random.lerf_auc.item()


def test_road_areas_are_normalised_by_the_removed_range():
    curves = ROADCurves(torch.tensor([10.0, 50.0, 90.0]), torch.tensor([[1.0, 0.5, 0.0]]), torch.ones(1, 3))
    # trapezoid over 0.1..0.9: 0.4 * (1 + 0.5) / 2 + 0.4 * 0.5 / 2 = 0.4, divided by 0.8
    assert math.isclose(curves.morf_auc.item(), 0.5, rel_tol=1e-6) and curves.lerf_auc.tolist() == [1.0]
    with pytest.raises(ValueError, match="strictly between"):
        road(MeanIntensityClassifier(), torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), percentages=(0, 50))
