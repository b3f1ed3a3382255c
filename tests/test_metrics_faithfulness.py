"""Deletion/insertion, counterfactual validity and the randomization test on hand-computed cases."""

from __future__ import annotations

import math

import torch
from torch import nn

from medxgan_monai.metrics import (
    cascading_randomization,
    counterfactual_validity,
    deletion_insertion,
    randomization_layers,
    rank_correlation,
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
