"""Our explanation metrics against Quantus 0.6.0 (Hedström et al., JMLR 2023), the reference toolkit, on one fixed set
of maps and masks.

The set: 16 signed 32x32 maps (12 seeded Gaussian noise maps, 4 structured: a noisy blob inside the mask, one beside
it, a ramp, a blob on the mask's edge) and seeded masks (rectangles and a disk, 4 to 81 pixels). Our side scores
``normalize_saliency(raw)`` (abs, then / max per image); Quantus is called on the raw maps with the same convention
spelt out: ``abs=True, normalise=True, normalise_func=normalise_by_max`` over each image's axes (Quantus' default
divides by the whole batch's maximum). None of these maps has a tie at its maximum or at the k-th largest value,
where the definitions differ (see each test). Quantus refuses a batch whose attributions are all equal (all zero or
all one) outright; it scores a single constant map inside a batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import quantus
    from quantus.functions.normalise_func import normalise_by_max
    from quantus.functions.similarity_func import correlation_spearman

from medxgan_monai.explain.base import normalize_saliency
from medxgan_monai.metrics import cascading_randomization, pointing_game, relevance_mass, top_k_iou

SIZE = 32
#: our maps' convention (abs, then divided by each image's maximum) as Quantus settings; without ``normalise_axes``
#: Quantus' ``normalise_by_max`` divides by the maximum of the whole batch
OUR_CONVENTION = {
    "abs": True,
    "normalise": True,
    "normalise_func": normalise_by_max,
    "normalise_func_kwargs": {"normalise_axes": (1, 2, 3)},
    "disable_warnings": True,
}
#: float32 sums in a different order: the only expected difference where the definitions agree
FLOAT_TOLERANCE = 1e-6


def _fixed_set() -> tuple[np.ndarray, np.ndarray]:
    """16 signed maps (B, 1, 32, 32) and their binary masks, always the same."""
    rng = np.random.default_rng(2023)
    maps = rng.normal(size=(16, 1, SIZE, SIZE)).astype(np.float32)
    masks = np.zeros_like(maps)
    for index in range(16):
        top, left = rng.integers(0, SIZE - 10, 2)
        height, width = rng.integers(2, 10, 2)
        masks[index, 0, top : top + height, left : left + width] = 1
    rows, columns = np.mgrid[:SIZE, :SIZE]
    masks[15, 0] = (rows - 16) ** 2 + (columns - 16) ** 2 <= 25  # a disk
    centre = masks[12, 0].nonzero()

    def blob(row, column, width):
        return np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * width**2))

    noise = rng.normal(0, 0.01, size=(4, SIZE, SIZE))
    maps[12, 0] = blob(centre[0].mean(), centre[1].mean(), 3) + noise[0]  # inside the mask
    maps[13, 0] = -blob(28, 3, 4) + noise[1]  # beside it, negative (abs decides)
    maps[14, 0] = columns / SIZE + noise[2]  # a ramp
    edge = masks[15, 0].nonzero()
    maps[15, 0] = blob(edge[0].max(), edge[1].mean(), 2) + noise[3]  # on the disk's edge
    return maps, masks


def _quantus(metric, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    inputs = np.random.default_rng(0).random(maps.shape).astype(np.float32)  # unused by these metrics, but required
    labels = np.ones(len(maps), dtype=int)
    return np.asarray(
        metric(model=None, x_batch=inputs, y_batch=labels, a_batch=maps.copy(), s_batch=masks), dtype=float
    )


def _ours(metric, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return metric(normalize_saliency(torch.from_numpy(maps)), torch.from_numpy(masks)).numpy()


def test_pointing_game_agrees_where_the_maximum_is_unique():
    """Ours (``pointing_game``) and ``quantus.PointingGame`` agree exactly on maps with one maximum.

    Definitional differences: (1) ties for the maximum: Quantus hits when *any* tied pixel is inside the mask, ours
    only when *every* tied pixel is (so a constant map scores 0, not 1); (2) an empty mask: ours is NaN, Quantus 0.6.0
    returns True (it writes NaN into a boolean array, which NumPy casts to True)."""
    maps, masks = _fixed_set()
    ours, theirs = _ours(pointing_game, maps, masks), _quantus(quantus.PointingGame(**OUR_CONVENTION), maps, masks)
    np.testing.assert_array_equal(ours, theirs)
    assert 0 < ours.sum() < len(ours), "the set has hits and misses"

    straddling = maps[:2].copy()
    straddling[0, 0] = 0
    top, left = (int(i.min()) for i in masks[0, 0].nonzero())
    straddling[0, 0, top, left] = straddling[0, 0, top, left - 1 if left else left + 30] = 5.0  # tied peak half out
    empty = masks[:2].copy()
    empty[1] = 0
    ours, theirs = (
        _ours(pointing_game, straddling, empty),
        _quantus(quantus.PointingGame(**OUR_CONVENTION), straddling, empty),
    )
    assert ours[0] == 0 and theirs[0] == 1, "a tied peak partly outside the mask: a miss for us, a hit for Quantus"
    assert np.isnan(ours[1]) and theirs[1] == 1, "an empty mask: NaN for us, True for Quantus"


def test_relevance_mass_agrees():
    """Ours (``relevance_mass``) and ``quantus.RelevanceMassAccuracy``: the map's mass inside the mask over its total
    mass, agreeing within float32 rounding (1e-6). Empty mask: NaN in both. An all-zero map: ours 0 (no mass inside),
    Quantus NaN (0 / 0)."""
    maps, masks = _fixed_set()
    ours = _ours(relevance_mass, maps, masks)
    theirs = _quantus(quantus.RelevanceMassAccuracy(**OUR_CONVENTION), maps, masks)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=FLOAT_TOLERANCE)

    zero_and_empty = maps[:2].copy()
    zero_and_empty[0] = 0
    empty = masks[:2].copy()
    empty[1] = 0
    ours = _ours(relevance_mass, zero_and_empty, empty)
    theirs = _quantus(quantus.RelevanceMassAccuracy(**OUR_CONVENTION), zero_and_empty, empty)
    assert ours[0] == 0 and np.isnan(theirs[0]), "an all-zero map"
    assert np.isnan(ours[1]) and np.isnan(theirs[1]), "an empty mask"


def test_top_gt_iou_is_relevance_rank_accuracy_transformed():
    """Ours (``top_k_iou``): IoU of the map's k = |mask| highest pixels with the mask. ``quantus.RelevanceRankAccuracy``
    (Arras et al. 2022): r = |top-k ∩ mask| / |mask|. Both sets have k pixels, so |union| = 2k - |∩| and
    IoU = r / (2 - r): equal within float rounding (1e-6). Ties at the k-th value are broken differently (ours by
    pixel order through ``torch.topk``, Quantus by NumPy's unstable ``argsort``), so maps with such ties may differ;
    the set has none. Empty mask: NaN in both."""
    maps, masks = _fixed_set()
    ours = _ours(top_k_iou, maps, masks)
    rank_accuracy = _quantus(quantus.RelevanceRankAccuracy(**OUR_CONVENTION), maps, masks)
    np.testing.assert_allclose(ours, rank_accuracy / (2 - rank_accuracy), rtol=0, atol=FLOAT_TOLERANCE)
    assert ours.max() > 0.5 and ours.min() == 0, "the set spans good and bad localization"


class _SameDrawOnReset:
    """A layer whose ``reset_parameters`` always draws the same weights (seed 7), so that both randomization tests
    re-initialize it identically: Quantus seeds ``seed + 1`` before each layer, ours seeds once before the cascade."""

    def reset_parameters(self) -> None:
        torch.manual_seed(7)
        super().reset_parameters()


class _Conv(_SameDrawOnReset, nn.Conv2d):
    pass


class _Linear(_SameDrawOnReset, nn.Linear):
    pass


def _tiny_network() -> nn.Sequential:
    """Two convolutions and a linear layer on 16x16 images, with seeded "trained" weights unlike a reset's draw."""
    torch.manual_seed(0)
    network = nn.Sequential(
        _Conv(1, 4, 3, padding=1), nn.ReLU(), _Conv(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), _Linear(4 * 256, 2)
    ).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.3)
    return network


def _input_gradient(model: nn.Module, inputs, targets=None, **kwargs) -> np.ndarray:
    """The signed input gradient of class 1, for both tests (Quantus' ``explain_func`` signature)."""
    images = torch.as_tensor(inputs).clone().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(model(images)[:, 1].sum(), images)
    return gradient.numpy()


def test_cascading_randomization_agrees_with_mprt():
    """Ours (``cascading_randomization``) and ``quantus.MPRT`` (``layer_order="top_down"``, Spearman) on a tiny
    network whose every parametrised layer is one step of the cascade: the per-layer, per-image correlations agree
    within 1e-6.

    Differences in general use: (1) layers: Quantus re-initializes every module with ``reset_parameters`` (each conv,
    norm, linear), ours groups of modules ``depth`` levels down (``randomization_layers``), the test passes Quantus'
    list; (2) seeding: Quantus calls ``torch.manual_seed(seed + 1)`` before each layer, ours seeds once, so the
    random weights differ unless, as here, each reset draws the same weights; (3) Quantus deep-copies the model, ours
    re-initializes it in place and restores it; (4) maps: ours are the explainer's (abs / max), Quantus applies
    ``abs`` and ``normalise_func`` itself (Spearman is unchanged by the positive scaling, not by ``abs``); (5) a
    constant map: ours correlates 0, Quantus' SciPy gives NaN."""
    network = _tiny_network()
    images = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    layers = [name for name, module in network.named_modules() if hasattr(module, "reset_parameters")][::-1]

    def explain(batch):
        return {"gradient": normalize_saliency(torch.from_numpy(_input_gradient(network, batch)))}

    trained = {name: value.clone() for name, value in network.state_dict().items()}
    ours_layers, ours = cascading_randomization(network, explain, images, layers)
    mprt = quantus.MPRT(layer_order="top_down", similarity_func=correlation_spearman, **OUR_CONVENTION)
    theirs = mprt(
        model=network, x_batch=images.numpy(), y_batch=np.ones(6, dtype=int), a_batch=None,
        explain_func=_input_gradient, device="cpu",
    )  # fmt: skip
    assert ours_layers == layers == [name for name in theirs if name != "original"]
    np.testing.assert_allclose(ours["gradient"].numpy(), [theirs[name] for name in layers], rtol=0, atol=1e-6)
    assert ours["gradient"][-1].abs().mean() < 0.5, "the test decorrelates the maps"
    assert all(torch.equal(trained[name], value) for name, value in network.state_dict().items()), "restored"


def test_sparseness_and_entropy_agree():
    """Ours (``metrics/complexity.py``: ``sparseness``, the Gini index of |a|, and ``entropy``, the Shannon entropy of
    |a| / sum |a|) and ``quantus.Sparseness`` / ``quantus.Complexity``. Quantus adds 1e-7 to every value before the
    Gini index, which scales it by S / (S + N 1e-7) (S = sum of the normalised map, N pixels; here below 1e-6
    relative), and 1e-12 inside the entropy's log; with float32 sums the tolerance is 1e-5 (both). An all-zero map:
    ours NaN (no distribution); Quantus NaN too when it normalises per image (0 / 0), else 0 Gini (after its offset, a
    constant map)."""
    from medxgan_monai.metrics.complexity import entropy, sparseness

    maps, _ = _fixed_set()
    labels, inputs = np.ones(len(maps), dtype=int), np.zeros_like(maps)
    ours = sparseness(normalize_saliency(torch.from_numpy(maps))).numpy()
    theirs = quantus.Sparseness(**OUR_CONVENTION)(model=None, x_batch=inputs, y_batch=labels, a_batch=maps.copy())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert ours.max() - ours.min() > 0.3, "the set spans diffuse and concentrated maps"
    ours = entropy(normalize_saliency(torch.from_numpy(maps))).numpy()
    theirs = quantus.Complexity(**OUR_CONVENTION)(model=None, x_batch=inputs, y_batch=labels, a_batch=maps.copy())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)

    with_zero = maps[:2].copy()
    with_zero[0] = 0
    assert np.isnan(sparseness(torch.from_numpy(with_zero))[0])
    data = {"model": None, "x_batch": inputs[:2], "y_batch": labels[:2]}
    assert np.isnan(quantus.Sparseness(**OUR_CONVENTION)(**data, a_batch=with_zero.copy())[0])
    unnormalised = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)(**data, a_batch=with_zero)
    assert unnormalised[0] == pytest.approx(0, abs=1e-6)


def test_max_sensitivity_agrees_on_the_same_perturbations():
    """Ours (``metrics/robustness.py`` ``max_sensitivity``: the largest ||Phi(x + delta) - Phi(x)||_F / ||Phi(x)||_F
    over ``samples`` draws of delta ~ U[-r, r] per pixel, maps abs / max per image) and ``quantus.MaxSensitivity``
    (the same ratio with its default ``difference`` and ``fro_norm``) on the same draws: our function's perturbed
    images are recorded and handed to Quantus as its ``perturb_func``'s output, in order. Agreement within 1e-5
    (float32 maps). With their own draws (ours a seeded torch generator, Quantus NumPy's global one) both are
    lower bounds of the maximum over the ball from a few samples and are not compared numerically. Quantus can drop
    draws that change the prediction (``return_nan_when_prediction_changes``, off here, as ours never does), and
    clips nothing, as ours."""
    from medxgan_monai.metrics.robustness import max_sensitivity

    network = _tiny_network()
    images = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    explained: list[np.ndarray] = []

    def explain(batch):
        explained.append(batch.detach().numpy().copy())
        return {"gradient": normalize_saliency(torch.from_numpy(_input_gradient(network, batch)))}

    samples, radius = 5, 0.2
    ours = max_sensitivity(explain, images, radius, samples=samples, seed=0)["gradient"].numpy()
    clean, perturbed = explained[0], iter(explained[1:])
    assert len(explained) == samples + 1 and np.array_equal(clean, images.numpy())

    def same_draws(arr, indices=None, **kwargs):
        return next(perturbed).reshape(arr.shape)

    metric = quantus.MaxSensitivity(nr_samples=samples, perturb_func=same_draws, lower_bound=radius, **OUR_CONVENTION)
    theirs = metric(
        model=network, x_batch=clean, y_batch=np.ones(6, dtype=int), a_batch=None,
        explain_func=_input_gradient, device="cpu",
    )  # fmt: skip
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert ours.min() > 0, "the maps move under the perturbations"
