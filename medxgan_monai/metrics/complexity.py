"""Complexity of saliency maps, per image: how concentrated a map's mass is. Both need only the maps.

* :func:`sparseness`: the Gini index of |a| (Chalasani et al., ICML 2020; Quantus' ``Sparseness``): 0 for a constant
  map, 1 - 1/N for a map with one non-zero pixel of N; higher is sparser.
* :func:`entropy`: the Shannon entropy of |a| / sum |a| (Bhatt et al., IJCAI 2020; Quantus' ``Complexity``), in nats:
  0 for one non-zero pixel, log N for a constant map; lower is simpler.

An all-zero map has no distribution: NaN for both (Quantus adds 1e-7 to every value, which scores it as a constant
map). Maps are (B, 1, *spatial) or (B, *spatial); results are (B,).
"""

from __future__ import annotations

import torch

__all__ = ["entropy", "sparseness"]


def _magnitudes(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) float64 |a| and (B,) True where the map is not all zero."""
    values = maps.detach().to(torch.float64).flatten(1).abs()
    return values, values.sum(1) > 0


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of |a|: sum_i (2i - N - 1) a_(i) / (N sum_i a_(i)), a_(1) <= ... <= a_(N) sorted (Chalasani et al.
    2020). NaN for an all-zero map."""
    values, nonzero = _magnitudes(maps)
    count = values.shape[1]
    ranks = torch.arange(1, count + 1, dtype=torch.float64)
    weighted = ((2 * ranks - count - 1) * values.sort(dim=1).values).sum(1)
    gini = weighted / (count * values.sum(1).clamp_min(1e-300))
    return torch.where(nonzero, gini, torch.full_like(gini, float("nan"))).float()


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy -sum_i p_i log p_i of p = |a| / sum |a| (natural log, 0 log 0 = 0; Bhatt et al. 2020). NaN for
    an all-zero map."""
    values, nonzero = _magnitudes(maps)
    shares = values / values.sum(1, keepdim=True).clamp_min(1e-300)
    result = -torch.special.xlogy(shares, shares).sum(1)
    return torch.where(nonzero, result, torch.full_like(result, float("nan"))).float()
