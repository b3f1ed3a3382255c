"""The per-image explanation metrics in one table: name, title, direction, what each needs, how it is computed.

Evaluation (``ExplanationScorer``, ``EvaluationReport``), the ablation table and the README tables read
:data:`METRICS`; :func:`score_maps` scores one method's maps of a batch with every metric whose needs are given and
NaN for the others. A new metric is a function in ``metrics/`` plus one :class:`ExplanationMetric` entry here. Each
metric belongs to a *group* (localization, faithfulness, counterfactual, complexity); ``summary.md`` writes one table
per group, in the order the groups first appear here.

Needs:

* ``"mask"``: ``masks``, the ground-truth lesion masks (B, 1, *spatial);
* ``"classifier"``: ``classifier`` and ``images``, to perturb the images by the maps and ask the classifier again;
* ``"counterfactual"``: ``probabilities`` and ``counterfactual_probability``, the classifier's target-class
  probabilities (B,) of the images and of the counterfactuals behind the maps (methods without one have none).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType

import torch
from torch import nn

from medxgan_monai.metrics.complexity import entropy, sparseness
from medxgan_monai.metrics.counterfactual import counterfactual_validity
from medxgan_monai.metrics.faithfulness import PerturbationCurves, ROADCurves, deletion_insertion, road
from medxgan_monai.metrics.localization import otsu_iou, pixel_auroc, pointing_game, relevance_mass, top_k_iou

__all__ = ["METRICS", "NEEDS", "ExplanationMetric", "MetricInputs", "metric_table", "score_maps"]

#: what a metric can need besides the maps
NEEDS = frozenset({"mask", "classifier", "counterfactual"})


@dataclass
class MetricInputs:
    """Everything a metric may read about one method's maps of a batch; absent inputs are ``None``.

    Every perturbation curve is computed once, on first use, and shared by the metrics that read it: deletion with
    each fill (:meth:`deletion_curves`; the zero fill's call also computes insertion) and ROAD (:attr:`road_curves`).
    """

    maps: torch.Tensor
    masks: torch.Tensor | None = None
    images: torch.Tensor | None = None
    classifier: nn.Module | None = None
    probabilities: torch.Tensor | None = None
    counterfactual_probability: torch.Tensor | None = None
    target: int = 1
    perturbation_steps: int = 20
    names: Sequence[str] | None = None
    _curves_by_fill: dict[str, PerturbationCurves] = field(default_factory=dict, init=False, repr=False)

    @property
    def available(self) -> frozenset[str]:
        """The :data:`NEEDS` these inputs satisfy."""
        given = {
            "mask": self.masks is not None,
            "classifier": self.classifier is not None and self.images is not None,
            "counterfactual": self.probabilities is not None and self.counterfactual_probability is not None,
        }
        return frozenset(need for need, present in given.items() if present)

    @property
    def perturbation_curves(self) -> PerturbationCurves:
        """Zero-fill deletion and insertion (RISE)."""
        return self.deletion_curves("zero")

    def deletion_curves(self, fill: str) -> PerturbationCurves:
        """Deletion curves with ``fill`` (one of :data:`~medxgan_monai.metrics.faithfulness.FILLS`), computed once;
        the zero fill's also carry insertion (the one insertion curve)."""
        if fill not in self._curves_by_fill:
            self._curves_by_fill[fill] = deletion_insertion(
                self.classifier,
                self.images,
                self.maps,
                self.target,
                self.perturbation_steps,
                fill,
                insertion=fill == "zero",
            )
        return self._curves_by_fill[fill]

    @cached_property
    def road_curves(self) -> ROADCurves:
        return road(self.classifier, self.images, self.maps, self.target)

    @cached_property
    def subset(self) -> tuple[torch.Tensor, MetricInputs]:
        """The batch's images in the costly metrics' subset (:data:`SUBSET_EVERY`) and these inputs restricted to
        them, shared (with their curves) by every metric computed on the subset."""
        if self.names is not None:
            selected = torch.tensor([_in_subset(name) for name in self.names], dtype=torch.bool)
        else:
            selected = torch.tensor([_in_subset(image) for image in self.images.detach().cpu()], dtype=torch.bool)
        indices = selected.nonzero().flatten()

        def rows(values: torch.Tensor | None) -> torch.Tensor | None:
            return None if values is None else values[indices.to(values.device)]

        restricted = replace(
            self,
            maps=rows(self.maps),
            masks=rows(self.masks),
            images=rows(self.images),
            probabilities=rows(self.probabilities),
            counterfactual_probability=rows(self.counterfactual_probability),
            names=None if self.names is None else [self.names[i] for i in indices.tolist()],
        )
        return indices, restricted


@dataclass(frozen=True)
class ExplanationMetric:
    """One per-image metric of explanation maps.

    Args:
        name: its column in the CSVs and its key in :data:`METRICS`.
        title: its heading in tables and charts.
        higher_is_better: its direction.
        needs: a subset of :data:`NEEDS`; without one of them the metric is NaN for every image.
        compute: ``compute(inputs: MetricInputs) -> (B,)`` tensor, NaN for images it does not apply to.
        group: the kind of metric; ``summary.md`` has one table per group.
    """

    name: str
    title: str
    higher_is_better: bool
    needs: frozenset[str]
    compute: Callable[[MetricInputs], torch.Tensor] = field(compare=False)
    group: str = "other"

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        if not self.needs <= NEEDS:
            raise ValueError(f"metric {self.name!r} needs {sorted(self.needs - NEEDS)}; known needs: {sorted(NEEDS)}")

    @property
    def heading(self) -> str:
        """Its table heading: the title and an arrow pointing the better way."""
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"

    @property
    def markdown_heading(self) -> str:
        """:attr:`heading` for a markdown table cell (``|`` escaped: ``top-|GT| IoU`` would split the cell)."""
        return self.heading.replace("|", "\\|")


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


def _deletion_auc(fill: str):
    """``compute`` of the deletion AUC with ``fill``."""

    def compute(inputs: MetricInputs) -> torch.Tensor:
        return inputs.deletion_curves(fill).deletion_auc

    return compute


def _insertion_auc(inputs: MetricInputs) -> torch.Tensor:
    return inputs.perturbation_curves.insertion_auc


def _road_morf_auc(inputs: MetricInputs) -> torch.Tensor:
    return inputs.road_curves.morf_auc


def _road_lerf_auc(inputs: MetricInputs) -> torch.Tensor:
    return inputs.road_curves.lerf_auc


def _of_maps(complexity: Callable[[torch.Tensor], torch.Tensor]):
    """``compute`` of a score of the maps alone."""

    def compute(inputs: MetricInputs) -> torch.Tensor:
        return complexity(inputs.maps.cpu())

    return compute


#: the costly perturbation metrics (deletion with mean and blur fill, ROAD) score about one image in this many
SUBSET_EVERY = 4


def _in_subset(image: torch.Tensor | str) -> bool:
    """Whether an image is in the costly metrics' subset: chosen by a hash (BLAKE2b, uniform where a CRC's low bits
    need not be) of its name when the caller has one (the evaluation passes each image's stem, which no float
    rounding of another CPU can change), else of its pixels; so the same images for every method, batch and run,
    without knowing their position in the datalist."""
    if isinstance(image, str):
        content = image.encode("utf-8")
    else:
        content = image.detach().cpu().contiguous().float().numpy().tobytes()
    digest = hashlib.blake2b(content, digest_size=8).digest()
    return int.from_bytes(digest, "little") % SUBSET_EVERY == 0


def _on_subset(compute: Callable[[MetricInputs], torch.Tensor]):
    """``compute`` on the images of the subset only (:attr:`MetricInputs.subset`), NaN for the others."""

    def on_subset(inputs: MetricInputs) -> torch.Tensor:
        indices, restricted = inputs.subset
        values = torch.full((inputs.maps.shape[0],), float("nan"))
        if len(indices):
            values[indices] = compute(restricted).float().cpu()
        return values

    return on_subset


def _counterfactual_validity(inputs: MetricInputs) -> torch.Tensor:
    return counterfactual_validity(inputs.probabilities, inputs.counterfactual_probability)


#: every per-image metric of an evaluation, in report order (grouped: one summary table per group)
METRICS = metric_table(
    ExplanationMetric("pointing_game", "pointing game", True, {"mask"}, _against_masks(pointing_game), "localization"),
    ExplanationMetric(
        "relevance_mass", "relevance mass", True, {"mask"}, _against_masks(relevance_mass), "localization"
    ),
    ExplanationMetric("top_k_iou", "top-|GT| IoU", True, {"mask"}, _against_masks(top_k_iou), "localization"),
    ExplanationMetric("pixel_auroc", "pixel AUROC", True, {"mask"}, _against_masks(pixel_auroc), "localization"),
    ExplanationMetric("otsu_iou", "Otsu IoU", True, {"mask"}, _against_masks(otsu_iou), "localization"),
    ExplanationMetric("deletion_auc", "deletion AUC", False, {"classifier"}, _deletion_auc("zero"), "faithfulness"),
    ExplanationMetric("insertion_auc", "insertion AUC", True, {"classifier"}, _insertion_auc, "faithfulness"),
    ExplanationMetric(
        "deletion_mean_auc",
        "deletion AUC (mean fill)",
        False,
        {"classifier"},
        _on_subset(_deletion_auc("mean")),
        "faithfulness",
    ),
    ExplanationMetric(
        "deletion_blur_auc",
        "deletion AUC (blur fill)",
        False,
        {"classifier"},
        _on_subset(_deletion_auc("blur")),
        "faithfulness",
    ),
    ExplanationMetric(
        "road_morf_auc", "ROAD MoRF AUC", False, {"classifier"}, _on_subset(_road_morf_auc), "faithfulness"
    ),
    ExplanationMetric(
        "road_lerf_auc", "ROAD LeRF AUC", True, {"classifier"}, _on_subset(_road_lerf_auc), "faithfulness"
    ),
    ExplanationMetric(
        "counterfactual_validity",
        "counterfactual validity",
        True,
        {"counterfactual"},
        _counterfactual_validity,
        "counterfactual",
    ),
    ExplanationMetric("sparseness", "sparseness (Gini)", True, set(), _of_maps(sparseness), "complexity"),
    ExplanationMetric("entropy", "entropy", False, set(), _of_maps(entropy), "complexity"),
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
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Score one method's ``maps`` (B, 1, *spatial) of a batch with every metric of ``metrics``.

    Returns name -> (B,) per-image values, in table order; a metric whose needs are not all given is NaN for every
    image. Each perturbation curve runs once (deletion per fill and insertion: ``perturbation_steps`` steps; ROAD:
    :data:`~medxgan_monai.metrics.faithfulness.ROAD_PERCENTAGES`; ``target`` class). The costly ones (deletion with
    mean and blur fill, ROAD) score only the images of a fixed subset, about one in :data:`SUBSET_EVERY` chosen by a
    hash of each image's name in ``names`` (B,) (else of its pixels), and are NaN for the others.

    Example::

        scores = score_maps(maps, masks=masks, images=images, classifier=classifier)
        scores["pointing_game"], scores["deletion_auc"]                 # (B,) each
        scores["counterfactual_validity"]                               # NaN: no counterfactual given
    """
    if names is not None and len(names) != maps.shape[0]:
        raise ValueError(f"{len(names)} names for {maps.shape[0]} maps")
    inputs = MetricInputs(
        maps.detach(),
        masks,
        images,
        classifier,
        probabilities,
        counterfactual_probability,
        target,
        perturbation_steps,
        None if names is None else list(names),
    )
    available = inputs.available
    not_applicable = torch.full((maps.shape[0],), float("nan"))
    return {
        name: metric.compute(inputs) if metric.needs <= available else not_applicable.clone()
        for name, metric in metrics.items()
    }
