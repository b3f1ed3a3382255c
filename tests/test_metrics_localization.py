"""Localization metrics on hand-computed cases."""

from __future__ import annotations

import math

import torch

from medxgan_monai.metrics import otsu_iou, pixel_auroc, pointing_game, relevance_mass, top_k_iou


def _case():
    mask = torch.zeros(1, 1, 2, 3)
    mask[0, 0, 0, :2] = 1  # two pixels of six
    maps = torch.tensor([[[[3.0, 1.0, 0.0], [0.0, 4.0, 0.0]]]])  # peak (4) outside; mass inside 4 of 8
    return maps, mask


def test_pointing_game():
    maps, mask = _case()
    assert pointing_game(maps, mask).tolist() == [0.0]
    maps[0, 0, 0, 0] = 5.0
    assert pointing_game(maps, mask).tolist() == [1.0]
    assert pointing_game(torch.ones_like(maps), mask).tolist() == [0.0], "a constant map must not score"


def test_relevance_mass():
    maps, mask = _case()
    assert relevance_mass(maps, mask).tolist() == [0.5]
    assert relevance_mass(torch.zeros_like(maps), mask).tolist() == [0.0]


def test_top_k_iou():
    maps, mask = _case()
    # k = 2: the two highest pixels are 4 (outside) and 3 (inside): intersection 1, union 3
    assert math.isclose(top_k_iou(maps, mask).item(), 1 / 3, rel_tol=1e-6)
    assert top_k_iou(mask * 2, mask).item() == 1.0


def test_pixel_auroc():
    maps, mask = _case()
    # inside values {3, 1} against outside {0, 4, 0, 0}: each inside pixel beats 3 of 4 outside pixels
    assert pixel_auroc(maps, mask).tolist() == [0.75]
    maps[0, 0, 0, 1] = 4.0  # a tie with the outside 4 counts one half: (3 + 3.5) / 8
    assert math.isclose(pixel_auroc(maps, mask).item(), 6.5 / 8)
    assert pixel_auroc(torch.ones_like(maps), mask).tolist() == [0.5]
    assert math.isnan(pixel_auroc(maps, torch.ones_like(mask)).item()), "no outside pixel: undefined"


def test_otsu_iou():
    maps, mask = _case()
    # the best two-class split of {0, 0, 0, 1, 3, 4} is {0, 0, 0, 1} | {3, 4}: kept pixels (0, 0) and (1, 1),
    # one of them inside the two-pixel mask: IoU 1 / 3
    assert math.isclose(otsu_iou(maps, mask).item(), 1 / 3, rel_tol=1e-6)
    assert otsu_iou(mask * 2, mask).item() == 1.0
    assert otsu_iou(torch.ones_like(maps), mask).item() == 0.0, "a constant map keeps nothing"


def test_empty_masks_give_nan_and_shapes_must_match():
    maps, mask = _case()
    for metric in (pointing_game, relevance_mass, top_k_iou, pixel_auroc, otsu_iou):
        assert math.isnan(metric(maps, torch.zeros_like(mask)).item())
    try:
        pointing_game(maps, mask[..., :2])
    except ValueError as error:
        assert "same shape" in str(error)
    else:
        raise AssertionError("shape mismatch must raise")


def test_bootstrap_ci_brackets_the_mean_and_drops_nans():
    from medxgan_monai.metrics import bootstrap_ci

    assert bootstrap_ci([0.5, 0.5, float("nan"), 0.5]) == (0.5, 0.5, 0.5)
    mean, low, high = bootstrap_ci([0.0, 1.0] * 50)
    assert mean == 0.5 and low < 0.5 < high and high - low < 0.3
    assert bootstrap_ci([0.0, 1.0] * 50) == (mean, low, high), "a fixed seed gives the same interval"
