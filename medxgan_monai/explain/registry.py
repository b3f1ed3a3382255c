"""The explanation methods, listed once, and :class:`Explainers`, the requested ones built on the networks they need.

Every consumer (the inference and evaluation bundles, the registered MLflow model, the console commands, the
benchmarks, the tests) reads :data:`METHODS`: a method is added by writing its explainer class (a
:class:`~medxgan_monai.explain.SaliencyExplainer`) and one :class:`Method` entry here.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medxgan_monai.explain.base import Attribution, SaliencyExplainer
from medxgan_monai.explain.baselines import (
    GradCAMExplainer,
    GradCAMPlusPlusExplainer,
    InputGradientExplainer,
    IntegratedGradientsExplainer,
    OcclusionExplainer,
    SmoothGradExplainer,
)
from medxgan_monai.explain.latent_shift import LatentShiftExplainer
from medxgan_monai.explain.medxgan import (
    LatentInverter,
    MedXGANDifference,
    MedXGANIntegratedGradients,
    MedXGANLatentIntegratedGradients,
)

__all__ = [
    "INVERSION",
    "METHODS",
    "Explainers",
    "Method",
    "counterfactual_names",
    "counterfactuals_by_name",
    "method_names",
]

#: what an explainer may need, in the order they are built: the networks, and the shared inversion of the images
#: into the generator's codes (built on the generator, the encoder when there is one, and the classifier)
NEEDS = ("classifier", "generator", "encoder", "counterfactual_encoder", "inverter")


@dataclass(frozen=True)
class Method:
    """One explanation method: how it is named, shown, built and what it produces.

    Args:
        name: the name in configs, on the command line and in output files (``<stem>_<name>.nii.gz``).
        title: the name in tables and panels.
        explainer: the :class:`~medxgan_monai.explain.SaliencyExplainer` class (or a factory) built with the
            ``needs`` as keyword arguments (``classifier=...``) and the options.
        needs: what it is built on, from :data:`NEEDS`.
        options: bundle setting -> keyword argument of ``explainer``; settings a method does not list do not
            reach it. Defaults are the explainer's own (:meth:`defaults`).
        counterfactual: the output name of the counterfactual image it produces (``<stem>_<name>.nii.gz``, the
            ``<name>_probability`` column of predictions.csv), or ``None``.
        panel: whether its map is shown in the explanation panel.
        optional: those of its ``needs`` it can do without (built as ``None`` when none was given).
    """

    name: str
    title: str
    explainer: Callable[..., SaliencyExplainer]
    needs: tuple[str, ...] = ("classifier",)
    options: Mapping[str, str] = field(default_factory=dict)
    counterfactual: str | None = None
    panel: bool = False
    optional: tuple[str, ...] = ()

    def defaults(self) -> dict[str, object]:
        """The explainer's default value of each option, by bundle setting."""
        parameters = inspect.signature(self.explainer).parameters
        return {setting: parameters[argument].default for setting, argument in self.options.items()}

    def build(self, built: Mapping[str, object], settings: Mapping[str, object], target: int = 1) -> SaliencyExplainer:
        """The explainer on the ``built`` needs, with the ``settings`` it takes (others are ignored)."""
        chosen = {argument: settings[setting] for setting, argument in self.options.items() if setting in settings}
        return self.explainer(**{need: built[need] for need in self.needs}, **chosen, target=target)


#: the shared inversion (:class:`LatentInverter`): its settings, like a method's options
INVERSION = Method(
    "inversion",
    "latent inversion",
    LatentInverter,
    needs=("generator", "classifier", "encoder"),
    optional=("encoder",),  # without one the inversion starts from zeros
    options={
        "inversion_steps": "steps",
        "inversion_learning_rate": "learning_rate",
        "pixel_weight": "pixel_weight",
        "classifier_weight": "classifier_weight",
        "counterfactual_weight": "counterfactual_weight",
    },
)

#: every explanation method, in the order results are shown (the default map first)
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "medxgan_ig",
            "medXGAN + IG",
            MedXGANIntegratedGradients,
            needs=("classifier", "generator", "inverter", "counterfactual_encoder"),
            optional=("counterfactual_encoder",),
            options={
                "counterfactual_steps": "counterfactual_steps",
                "counterfactual_max_steps": "counterfactual_max_steps",
                "counterfactual_learning_rate": "counterfactual_learning_rate",
                "counterfactual_sparsity": "counterfactual_sparsity",
                "medxgan_ig_steps": "ig_steps",
            },
            counterfactual="residual_counterfactual",
            panel=True,
        ),
        Method(
            "medxgan",
            "medXGAN difference",
            MedXGANDifference,
            needs=("classifier", "generator", "inverter"),
            options={"sweep_frames": "sweep_frames"},
            counterfactual="counterfactual",
            panel=True,
        ),
        Method(
            "medxgan_lig",
            "medXGAN latent IG",
            MedXGANLatentIntegratedGradients,
            needs=("classifier", "generator", "inverter"),
            options={"latent_ig_steps": "steps", "latent_ig_variant": "variant"},
            counterfactual="counterfactual",
            panel=True,
        ),
        Method(
            "gradcam",
            "Grad-CAM",
            GradCAMExplainer,
            options={"gradcam_target_layers": "target_layers"},
            panel=True,
        ),
        Method("ig", "Integrated Gradients", IntegratedGradientsExplainer, options={"ig_steps": "steps"}, panel=True),
        Method("gradient", "input gradient", InputGradientExplainer),
        Method("occlusion", "occlusion", OcclusionExplainer, options={"occlusion_mask_size": "mask_size"}),
        Method("latentshift", "Latent Shift", LatentShiftExplainer, needs=("classifier", "generator", "encoder")),
        Method(
            "smoothgrad",
            "SmoothGrad",
            SmoothGradExplainer,
            options={"smoothgrad_samples": "samples", "smoothgrad_noise": "noise", "smoothgrad_seed": "seed"},
            panel=True,
        ),
        Method(
            "gradcampp",
            "Grad-CAM++",
            GradCAMPlusPlusExplainer,
            options={"gradcam_target_layers": "target_layers"},
            panel=True,
        ),
    )
}


def method_names() -> list[str]:
    """Every method's name, in :data:`METHODS` order (for command-line choices and defaults)."""
    return list(METHODS)


def counterfactual_names() -> list[str]:
    """The names of the counterfactual images the methods can produce (sorted: the order of output columns)."""
    return sorted({method.counterfactual for method in METHODS.values() if method.counterfactual is not None})


def counterfactuals_by_name(attributions: Mapping[str, Attribution]) -> dict[str, Attribution]:
    """Per counterfactual name, the attribution of the first method (in ``attributions`` order) that produced it:
    the one whose counterfactual is written and reported (``medxgan`` and ``medxgan_lig`` share G(z_a, 0))."""
    found: dict[str, Attribution] = {}
    for method, attribution in attributions.items():
        name = METHODS[method].counterfactual
        if name is not None and attribution.counterfactual is not None:
            found.setdefault(name, attribution)
    return found


class Explainers:
    """The requested methods' explainers, built from :data:`METHODS` on only the networks they need.

    ``generator`` and ``encoder`` may be modules or functions that load them (e.g. a config entry with
    ``"_mode_": "callable"``): a function is called only when a requested method needs its network, so
    ``methods=["gradcam"]`` loads no generator and runs no inversion. The medXGAN methods share one
    :class:`LatentInverter`: per batch the images are inverted once whichever of them run.

    Args:
        methods: method names from :data:`METHODS`, in the order results are returned.
        classifier: the explained classifier.
        generator, encoder: the medXGAN generator and encoder (modules, loaders or ``None``).
        counterfactual_encoder: the encoder that starts the default map's refinement (amortised refinement; module,
            loader or ``None``: then it starts from the inverted codes).
        settings: bundle settings by name (e.g. ``{"ig_steps": 50, "inversion_steps": 25}``); each method takes
            those its :class:`Method` entry lists. A name no method or the inversion lists is an error (a typo
            would otherwise silently keep a default).
        target: the explained class.

    Example::

        explainers = Explainers(["medxgan_ig", "gradcam"], classifier, generator, encoder, {"inversion_steps": 25})
        attributions, seconds = explainers.explain(images)
        attributions["medxgan_ig"].maps, attributions["medxgan_ig"].counterfactual
    """

    def __init__(
        self,
        methods: Sequence[str],
        classifier: nn.Module,
        generator: nn.Module | Callable[[], nn.Module] | None = None,
        encoder: nn.Module | Callable[[], nn.Module] | None = None,
        settings: Mapping[str, object] | None = None,
        target: int = 1,
        counterfactual_encoder: nn.Module | Callable[[], nn.Module | None] | None = None,
    ) -> None:
        self.methods = list(methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown or no explanation method(s) {unknown}; available: {method_names()}")
        settings = dict(settings or {})
        known = {s for method in (INVERSION, *METHODS.values()) for s in method.options}
        if set(settings) - known:
            raise ValueError(f"unknown explanation setting(s) {sorted(set(settings) - known)}; known: {sorted(known)}")
        self.settings = settings
        self.target = target
        self._sources = {
            "classifier": classifier,
            "generator": generator,
            "encoder": encoder,
            "counterfactual_encoder": counterfactual_encoder,
        }
        self._built: dict[str, object] = {}
        self.explainers: dict[str, SaliencyExplainer] = {
            name: METHODS[name].build(self._needs(METHODS[name].needs, name, METHODS[name].optional), settings, target)
            for name in self.methods
        }

    def _needs(self, needs: Sequence[str], method: str, optional: Sequence[str] = ()) -> dict[str, object]:
        """The ``needs`` built (networks loaded once, the inverter built once); ``optional`` ones may be None."""
        for need in sorted(needs, key=NEEDS.index):
            if need not in self._built:
                if need == "inverter":
                    networks = self._needs(INVERSION.needs, method, INVERSION.optional)
                    self._built[need] = INVERSION.build(networks, self.settings, self.target)
                else:
                    source = self._sources[need]
                    self._built[need] = source() if callable(source) and not isinstance(source, nn.Module) else source
            if self._built[need] is None and need not in optional:
                raise ValueError(f"explanation method {method!r} needs the {need}, and none was given")
        return {need: self._built[need] for need in needs}

    @property
    def inverter(self) -> LatentInverter | None:
        return self._built.get("inverter")

    def explain(self, images: torch.Tensor) -> tuple[dict[str, Attribution], dict[str, float]]:
        """Every requested method's :class:`Attribution` of ``images`` (in :attr:`methods` order) and its seconds
        per image, each as if it ran alone (a shared inversion counts for every method that uses it)."""
        attributions, seconds = {}, {}
        inverter = self.inverter
        with inverter.reuse() if inverter is not None else contextlib.nullcontext():
            for name, explainer in self.explainers.items():
                reused_before = inverter.reused_seconds if inverter is not None else 0.0
                start = time.perf_counter()
                attributions[name] = explainer.explain(images)
                elapsed = time.perf_counter() - start
                reused = (inverter.reused_seconds - reused_before) if inverter is not None else 0.0
                seconds[name] = (elapsed + reused) / images.shape[0]
        return attributions, seconds

    def maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every requested method's normalized maps of ``images``, by method."""
        return {name: attribution.maps for name, attribution in self.explain(images)[0].items()}
