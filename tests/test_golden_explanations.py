"""Golden test: every method's map and every predictions.csv value on fixed demo images stay what they were.

``tests/data/golden_explanations.npz`` holds a few preprocessed demo test images (float64) and, for each method of
``inference.json``'s ``methods``, the normalized map the shipped bundle computes for them in one batch, with the
classifier probability, the medXGAN counterfactual and residual counterfactual (images and probabilities: the
``*_counterfactual.nii.gz`` outputs and the values ``predictions.csv`` holds). The test rebuilds the bundle's
networks and explainers from ``bundle/configs/inference.json`` and recomputes everything on the stored images; every
value must match within :data:`TOLERANCE`.

Everything runs in float64: float32 results differ between CPUs and batch sizes by kernel rounding (see
``tests/test_explain.py::test_each_image_is_explained_as_if_alone``), while in float64 rounding stays far below
1e-6, so any larger difference is a change of behaviour. The test is skipped when the shipped weights are not the
ones the file was made with (weights replaced on purpose); a changed setting in ``inference.json`` fails it.

The file is made by ``scripts/make_golden_explanations.py``, which computes through :func:`explain_every_method`
below. Regenerate it only when a change is MEANT to change results (new weights, a new setting, a fixed bug), and
say so in the commit; a refactoring must pass this test unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_explanations.npz"
#: largest allowed absolute difference of any value (maps, images and probabilities are all in [0, 1])
TOLERANCE = 1e-6
#: the config entries naming the weight files the golden values depend on
WEIGHT_ENTRIES = ("classifier_ckpt", "generator_ckpt", "encoder_ckpt", "counterfactual_encoder_ckpt")
#: prefix of the npz entries holding computed values (the rest: inputs and the record of what produced them)
OUTPUT = "output/"


def inference_config(bundle_root: Path = BUNDLE_ROOT):
    """The inference bundle's config, on the CPU."""
    from medxgan_monai.bundle import inference_config as bundle_inference_config

    return bundle_inference_config(bundle_root)


def weight_hashes(config) -> dict[str, str]:
    """sha256 of each weight file the bundle loads, by config entry."""
    paths = {entry: config.get_parsed_content(entry) for entry in WEIGHT_ENTRIES}
    return {entry: hashlib.sha256(Path(path).read_bytes()).hexdigest() for entry, path in paths.items() if path}


def explainer_settings(config) -> dict:
    """What configures the explainers: the ``explainers`` section as written and the values of the plain settings it
    references (``@ig_steps`` ...), plus the methods; networks are identified by :func:`weight_hashes`."""
    section = config.get("explainers")
    referenced = sorted(set(_references(section)))
    values = {name: config.get_parsed_content(name) for name in referenced}
    settings = {name: value for name, value in values.items() if isinstance(value, (bool, int, float, str, list))}
    return {"methods": config.get_parsed_content("methods"), "explainers": section, "settings": settings}


def _references(node):
    """Names of the config entries referenced (``@name``) anywhere in ``node``."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)
    elif isinstance(node, str) and node.startswith("@"):
        yield node[1:]


def explain_every_method(config, images) -> dict[str, np.ndarray]:
    """Every value the bundle writes for ``images`` (B, 1, H, W), computed in float64, by name: ``map:<method>``
    (B, 1, H, W) for each method, ``predictions.csv:<column>`` (B,) for the probability columns and
    ``image:<name>`` (B, 1, H, W) for the counterfactual images (``<stem>_<name>.nii.gz``).

    The bundle's networks are converted to float64 before the config's ``explainers`` are built on them (the
    explainers keep float64 inputs in float64), and the batch is explained once, under ``torch.no_grad()`` as in the
    evaluator. These are the only calls into the explanation API.
    """
    import torch

    from medxgan_monai.explain import METHODS
    from medxgan_monai.networks.classifier import class_probabilities

    images = torch.as_tensor(images, dtype=torch.float64)
    # the loaded networks themselves, not loaders: converted in place before the explainers are built on them
    networks = ("classifier_net", "generator", "encoder", "counterfactual_encoder")
    for network in networks[1:]:
        config[f"explainers#{network}"] = f"@{network}"
    for network in networks:
        if config.get_parsed_content(network) is not None:  # the counterfactual encoder is optional
            config.get_parsed_content(network).double()
    classifier = config.get_parsed_content("classifier_net")
    outputs = {}
    with torch.no_grad():
        # predictions.csv's probability comes from the evaluator's forward pass of the classifier
        outputs["predictions.csv:probability"] = class_probabilities(classifier(images))[:, 1]
        attributions, _ = config.get_parsed_content("explainers").explain(images)
    for method, attribution in attributions.items():
        outputs[f"map:{method}"] = attribution.maps
        name = METHODS[method].counterfactual
        if name is not None and f"image:{name}" not in outputs:  # the first method's, as the writers take it
            outputs[f"predictions.csv:{name}_probability"] = attribution.counterfactual_probability
            outputs[f"image:{name}"] = attribution.counterfactual
    wrong = {name: value.dtype for name, value in outputs.items() if value.dtype != torch.float64}
    assert not wrong, f"not computed in float64: {wrong}"
    return {name: value.detach().cpu().numpy() for name, value in outputs.items()}


def changed_settings(recorded: dict, current: dict) -> dict:
    """The plain settings and methods that differ between two :func:`explainer_settings` records: (old, new)."""
    old = {**recorded["settings"], "methods": recorded["methods"]}
    new = {**current["settings"], "methods": current["methods"]}
    return {name: (old.get(name), new.get(name)) for name in sorted(old | new) if old.get(name) != new.get(name)}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as stored:
        return {name: stored[name] for name in stored.files}


@pytest.fixture
def one_thread():
    """Run on one CPU thread: float64 results do not depend on the thread count beyond rounding (measured: 2e-9
    between 1 and 2 threads), and the explainers' thousands of small operations (64x64 images) stall at every
    parallel region when the cores are shared (measured on 2 busy cores: 28 s on one thread, over 250 s on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_every_method_gives_the_golden_values(golden):
    config = inference_config()
    if weight_hashes(config) != json.loads(str(golden["weight_sha256"])):
        pytest.skip(
            "the shipped weights are not those the golden values were made with (replaced on purpose?): "
            "regenerate tests/data/golden_explanations.npz with scripts/make_golden_explanations.py"
        )
    recomputed = explain_every_method(config, golden["images"])
    expected = {name.removeprefix(OUTPUT): golden[name] for name in golden if name.startswith(OUTPUT)}
    assert sorted(recomputed) == sorted(expected), "the values computed are not those recorded"
    failures = []
    for name, value in expected.items():
        difference = float(np.abs(recomputed[name] - value.astype(np.float64)).max())
        if not difference <= TOLERANCE:  # NaN fails too
            failures.append(f"{name} differs by up to {difference:.3g}")
    changed = changed_settings(json.loads(str(golden["settings"])), explainer_settings(config))
    assert not failures, (
        f"{len(failures)} value(s) differ from {GOLDEN.name} by more than {TOLERANCE:g}: "
        + "; ".join(failures)
        + (f" (settings changed since it was made, (recorded, now): {changed})" if changed else "")
    )
