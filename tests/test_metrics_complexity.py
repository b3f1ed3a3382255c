"""Sparseness (Gini index) and entropy of saliency maps on hand-computed cases."""

from __future__ import annotations

import math

import torch

from medxgan_monai.metrics import entropy, sparseness


def _one_hot(size: int = 8) -> torch.Tensor:
    maps = torch.zeros(1, 1, size, size)
    maps[0, 0, 3, 5] = 0.7
    return maps


def test_sparseness_is_the_gini_index_of_the_magnitudes():
    pixels = 64
    assert math.isclose(sparseness(_one_hot()).item(), 1 - 1 / pixels, rel_tol=1e-6), "one pixel: 1 - 1/N"
    assert sparseness(torch.full((1, 1, 8, 8), 0.3)).item() == 0.0, "a constant map is not sparse"
    # [1, 1, 0, 0] sorted: (2i - N - 1) = -3, -1, 1, 3 -> (1 + 3) / (4 * 2) = 0.5; the sign does not count
    assert sparseness(torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]])).tolist() == [0.5]
    batch = torch.cat([_one_hot(), torch.full((1, 1, 8, 8), 0.3), torch.zeros(1, 1, 8, 8)])
    values = sparseness(batch)
    assert values.shape == (3,) and math.isnan(values[2].item()), "an all-zero map has no distribution"


def test_entropy_of_the_normalised_magnitudes():
    assert math.isclose(entropy(torch.full((1, 1, 8, 8), 0.3)).item(), math.log(64), rel_tol=1e-6), "uniform: log N"
    assert entropy(_one_hot()).tolist() == [0.0], "all mass on one pixel"
    assert math.isclose(entropy(torch.tensor([[[[1.0, 0.0], [0.0, -1.0]]]])).item(), math.log(2), rel_tol=1e-6)
    # p = (0.5, 0.25, 0.25, 0): -(0.5 log 0.5 + 2 * 0.25 log 0.25) = 1.5 log 2
    assert math.isclose(entropy(torch.tensor([[2.0, 1.0, 1.0, 0.0]])).item(), 1.5 * math.log(2), rel_tol=1e-6)
    assert math.isnan(entropy(torch.zeros(1, 1, 4, 4)).item())
    assert entropy(torch.rand(2, 1, 4, 4, 4)).shape == (2,), "3D maps"
