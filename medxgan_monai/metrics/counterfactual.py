"""Counterfactual metrics: does the explanation's counterfactual actually change the classifier's decision?"""

from __future__ import annotations

import torch

__all__ = ["counterfactual_validity"]


def counterfactual_validity(
    probabilities: torch.Tensor, counterfactual_probabilities: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Per image: 1 when the classifier calls the image positive and its counterfactual negative, 0 when the
    counterfactual is still positive, NaN when the image itself is called negative (nothing to flip). The mean over
    images is the counterfactual validity (flip rate) of Dravid et al. 2022 and Cohen et al. 2021.

    Args:
        probabilities: (B,) positive-class probabilities of the images.
        counterfactual_probabilities: (B,) positive-class probabilities of their counterfactuals.
        threshold: the decision threshold.
    """
    positive = probabilities.detach().float().cpu() >= threshold
    flipped = (counterfactual_probabilities.detach().float().cpu() < threshold).float()
    return torch.where(positive, flipped, torch.full_like(flipped, float("nan")))
