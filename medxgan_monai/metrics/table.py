"""The per-image explanation metrics in one table: name, title, direction, what each needs, how it is computed.

Evaluation (``ExplanationScorer``, ``EvaluationReport``), the ablation table and the README tables read
:data:`METRICS`; :func:`score_maps` scores one method's maps of a batch with every metric whose needs are given and
NaN for the others. A new metric is a function in ``metrics/`` plus one :class:`ExplanationMetric` entry here.

Needs:

* ``"mask"``: ``masks``, the ground-truth lesion masks (B, 1, *spatial);
* ``"classifier"``: ``classifier`` and ``images``, to perturb the images by the maps and ask the classifier again;
* ``"counterfactual"``: ``probabilities`` and ``counterfactual_probability``, the classifier's target-class
  probabilities (B,) of the images and of the counterfactuals behind the maps (methods without one have none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

import torch
from torch import nn

from medxgan_monai.metrics.counterfactual import counterfactual_validity
from medxgan_monai.metrics.faithfulness import PerturbationCurves, deletion_insertion
from medxgan_monai.metrics.localization import otsu_iou, pixel_auroc, pointing_game, relevance_mass, top_k_iou

__all__ = ["METRICS", "NEEDS", "ExplanationMetric", "MetricInputs", "metric_table", "score_maps"]

#: what a metric can need besides the maps
NEEDS = frozenset({"mask", "classifier", "counterfactual"})


@dataclass
class MetricInputs:
    """Everything a metric may read about one method's maps of a batch; absent inputs are ``None``.

    The deletion and insertion curves are computed once, on first use, and shared by the metrics that read them.
    """

    maps: torch.Tensor
    masks: torch.Tensor | None = None
    images: torch.Tensor | None = None
    classifier: nn.Module | None = None
    probabilities: torch.Tensor | None = None
    counterfactual_probability: torch.Tensor | None = None
    target: int = 1
    perturbation_steps: int = 20

    @property
    def available(self) -> frozenset[str]:
        """The :data:`NEEDS` these inputs satisfy."""
        given = {
            "mask": self.masks is not None,
            "classifier": self.classifier is not None and self.images is not None,
            "counterfactual": self.probabilities is not None and self.counterfactual_probability is not None,
        }
        return frozenset(need for need, present in given.items() if present)

    @cached_property
    def perturbation_curves(self) -> PerturbationCurves:
        return deletion_insertion(self.classifier, self.images, self.maps, self.target, self.perturbation_steps)


@dataclass(frozen=True)
class ExplanationMetric:
    """One per-image metric of explanation maps.

    Args:
        name: its column in the CSVs and its key in :data:`METRICS`.
        title: its heading in tables and charts.
        higher_is_better: its direction.
        needs: a subset of :data:`NEEDS`; without one of them the metric is NaN for every image.
        compute: ``compute(inputs: MetricInputs) -> (B,)`` tensor, NaN for images it does not apply to.
    """

    name: str
    title: str
    higher_is_better: bool
    needs: frozenset[str]
    compute: Callable[[MetricInputs], torch.Tensor] = field(compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        if not self.needs <= NEEDS:
            raise ValueError(f"metric {self.name!r} needs {sorted(self.needs - NEEDS)}; known needs: {sorted(NEEDS)}")

    @property
    def heading(self) -> str:
        """Its table heading: the title and an arrow pointing the better way."""
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"


def metric_table(*metrics: ExplanationMetric) -> Mapping[str, ExplanationMetric]:
    """A read-only, ordered name -> metric table; names must be unique."""
    table = {metric.name: metric for metric in metrics}
    if len(table) != len(metrics):
        names = [metric.name for metric in metrics]
        raise ValueError(f"metric names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
    return MappingProxyType(table)


def _against_masks(localization: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """``compute`` of a localization score ``localization(maps, masks)`` (on the CPU: they use NumPy and sklearn)."""

    def compute(inputs: MetricInputs) -> torch.Tensor:
        return localization(inputs.maps.cpu(), inputs.masks.cpu())

    return compute


def _deletion_auc(inputs: MetricInputs) -> torch.Tensor:
    return inputs.perturbation_curves.deletion_auc


def _insertion_auc(inputs: MetricInputs) -> torch.Tensor:
    return inputs.perturbation_curves.insertion_auc


def _counterfactual_validity(inputs: MetricInputs) -> torch.Tensor:
    return counterfactual_validity(inputs.probabilities, inputs.counterfactual_probability)


#: every per-image metric of an evaluation, in report order
METRICS = metric_table(
    ExplanationMetric("pointing_game", "pointing game", True, {"mask"}, _against_masks(pointing_game)),
    ExplanationMetric("relevance_mass", "relevance mass", True, {"mask"}, _against_masks(relevance_mass)),
    ExplanationMetric("top_k_iou", "top-|GT| IoU", True, {"mask"}, _against_masks(top_k_iou)),
    ExplanationMetric("pixel_auroc", "pixel AUROC", True, {"mask"}, _against_masks(pixel_auroc)),
    ExplanationMetric("otsu_iou", "Otsu IoU", True, {"mask"}, _against_masks(otsu_iou)),
    ExplanationMetric("deletion_auc", "deletion AUC", False, {"classifier"}, _deletion_auc),
    ExplanationMetric("insertion_auc", "insertion AUC", True, {"classifier"}, _insertion_auc),
    ExplanationMetric(
        "counterfactual_validity", "counterfactual validity", True, {"counterfactual"}, _counterfactual_validity
    ),
)


def score_maps(
    maps: torch.Tensor,
    *,
    masks: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    classifier: nn.Module | None = None,
    probabilities: torch.Tensor | None = None,
    counterfactual_probability: torch.Tensor | None = None,
    target: int = 1,
    perturbation_steps: int = 20,
    metrics: Mapping[str, ExplanationMetric] = METRICS,
) -> dict[str, torch.Tensor]:
    """Score one method's ``maps`` (B, 1, *spatial) of a batch with every metric of ``metrics``.

    Returns name -> (B,) per-image values, in table order; a metric whose needs are not all given is NaN for every
    image. The deletion and insertion curves run once (``perturbation_steps`` steps, ``target`` class).

    Example::

        scores = score_maps(maps, masks=masks, images=images, classifier=classifier)
        scores["pointing_game"], scores["deletion_auc"]                 # (B,) each
        scores["counterfactual_validity"]                               # NaN: no counterfactual given
    """
    inputs = MetricInputs(
        maps.detach(), masks, images, classifier, probabilities, counterfactual_probability, target, perturbation_steps
    )
    available = inputs.available
    not_applicable = torch.full((maps.shape[0],), float("nan"))
    return {
        name: metric.compute(inputs) if metric.needs <= available else not_applicable.clone()
        for name, metric in metrics.items()
    }
