"""Sanity check of saliency maps: the cascading model-parameter randomization test (Adebayo et al., NeurIPS 2018).

An explanation that explains the *model* must change when the model's learned weights are destroyed. The test
re-initializes the classifier's layers one group at a time, from the output back to the input (cumulatively), and
after each group measures the Spearman rank correlation between the map of the trained model and the map of the
damaged one. Correlations that stay high mean the map shows the image (edges, intensity), not the model's evidence.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

__all__ = ["cascading_randomization", "randomization_layers", "rank_correlation"]


def randomization_layers(network: nn.Module, depth: int = 2) -> list[str]:
    """Names of the submodules ``depth`` levels down (``features.denseblock1`` at depth 2) that hold parameters, in
    registration order (input to output for sequential networks); a parametrised module shallower than ``depth``
    without children is listed itself."""
    names = []
    for name, module in network.named_modules():
        level = name.count(".") + 1 if name else 0
        has_parameters = any(True for _ in module.parameters())
        if has_parameters and (level == depth or (0 < level < depth and not any(True for _ in module.children()))):
            names.append(name)
    return names


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of two batches of maps, per image (B,) (SciPy's ``spearmanr``, ties averaged).
    A constant map has no ranking to agree with: its correlation is 0."""
    scores = []
    for a, b in zip(first.detach().flatten(1).cpu().numpy(), second.detach().flatten(1).cpu().numpy(), strict=True):
        constant = np.ptp(a) == 0 or np.ptp(b) == 0
        scores.append(0.0 if constant else float(spearmanr(a, b).statistic))
    return torch.tensor(scores)


def _reinitialize(module: nn.Module) -> None:
    for part in module.modules():
        if hasattr(part, "reset_parameters"):
            part.reset_parameters()


@torch.no_grad()
def cascading_randomization(
    network: nn.Module,
    explain: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    images: torch.Tensor,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Run the cascading randomization test of the maps that ``explain`` makes of ``images``.

    The weights of ``network`` are re-initialized **in place** (so every explainer that holds it sees the damaged
    model) with each layer's own ``reset_parameters`` under a fixed ``seed``, and restored before returning, also on
    error.

    Args:
        network: the classifier network the explainers use (the module inside a ``FrozenClassifier``).
        explain: images -> {method: maps (B, 1, *spatial)}; called once on the trained model and once per layer
            group, so one call can serve several methods (medXGAN's two maps come from one explanation).
        images: the images (B, C, *spatial) to explain.
        layers: module names to re-initialize, from the output back to the input;
            default: ``reversed(randomization_layers(network))``.

    Returns:
        the layer names in cascade order, and per method the (L, B) Spearman correlations with the trained model's
        maps after each cumulative re-initialization.

    Example::

        layers, correlations = cascading_randomization(
            classifier.network, lambda x: {"gradient": gradient_explainer(x)}, images
        )
        correlations["gradient"].mean(1)      # should fall towards 0 as layers are randomized
    """
    layers = list(layers) if layers is not None else list(reversed(randomization_layers(network)))
    modules = dict(network.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not in the network (available: {randomization_layers(network)})")
    trained_state = copy.deepcopy(network.state_dict())
    with torch.enable_grad():
        reference = dict(explain(images))
    correlations: dict[str, list[torch.Tensor]] = {method: [] for method in reference}
    try:
        torch.manual_seed(seed)
        for name in layers:
            _reinitialize(modules[name])
            with torch.enable_grad():
                damaged = explain(images)
            for method, maps in reference.items():
                correlations[method].append(rank_correlation(maps, damaged[method]))
    finally:
        network.load_state_dict(trained_state)
    empty = torch.empty(0, images.shape[0])
    return layers, {method: torch.stack(values) if values else empty for method, values in correlations.items()}
