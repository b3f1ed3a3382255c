"""Explainers on tiny networks: call shape, the shared map convention, batch independence, IG completeness."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import DenseNet

from medxgan_monai.explain import (
    CounterfactualRefiner,
    Explainers,
    IntegratedGradientsExplainer,
    LatentInverter,
    MedXGANDifference,
    MedXGANIntegratedGradients,
    latent_path_integrated_gradients,
    method_names,
    normalize_saliency,
)
from medxgan_monai.networks import FrozenClassifier, MedXGANEncoder, MedXGANGenerator

SIZE = (32, 40)  # non-square on purpose


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    classifier = FrozenClassifier(DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2, 2)))
    generator = MedXGANGenerator(image_size=SIZE, anatomy_dim=16, pathology_dim=4, channels=(16, 8)).eval()
    encoder = MedXGANEncoder(image_size=SIZE, anatomy_dim=16, pathology_dim=4, channels=(8, 16)).eval()
    images = torch.rand(3, 1, *SIZE)
    return classifier, generator, encoder, images


def test_normalize_saliency_is_absolute_and_peaks_at_one():
    maps = torch.tensor([[[[-4.0, 2.0]], [[1.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])  # (2, 2, 1, 2)
    normalized = normalize_saliency(maps)
    assert normalized.shape == (2, 1, 1, 2)
    assert torch.allclose(normalized[0, 0, 0], torch.tensor([1.0, 0.4]))
    assert torch.equal(normalized[1], torch.zeros(1, 1, 2))


#: small settings for every method; medXGAN with its refinement on, so all of its stages run
SMALL_SETTINGS = {
    "inversion_steps": 4,
    "counterfactual_steps": 6,
    "ig_steps": 4,
    "medxgan_ig_steps": 4,
    "latent_ig_steps": 4,
    "sweep_frames": 3,
    "occlusion_mask_size": 8,
}


def every_explainer(classifier, generator, encoder) -> dict:
    """Every registered method's explainer, built as the bundle builds them, with small settings."""
    return Explainers(method_names(), classifier, generator, encoder, SMALL_SETTINGS).explainers


def explained(explainer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every per-image tensor of an explainer's :class:`Attribution`, by name."""
    with torch.no_grad():  # evaluators run under no_grad: explainers must enable gradients themselves
        result = explainer.explain(images)
    parts = {"map": result.maps, "counterfactual": result.counterfactual}
    parts["counterfactual_probability"] = result.counterfactual_probability
    if result.sweep is not None:
        parts |= {"sweep_frames": result.sweep.frames, "sweep_probabilities": result.sweep.probabilities}
    parts |= {f"details:{name}": value for name, value in result.details.items()}
    return {name: value for name, value in parts.items() if value is not None}


def batch_and_single_differences(explainer, images: torch.Tensor) -> tuple[dict[str, float], list[dict]]:
    """Per output, the largest difference between each image explained in the batch, alone, and beside a very
    different image (its intensity inverse); and the outputs of each image alone."""
    batch = explained(explainer, images)
    differences, alone = dict.fromkeys(batch, 0.0), []
    for index, image in enumerate(images):
        alone.append(explained(explainer, image[None]))
        beside = explained(explainer, torch.stack([image, 1 - image]))
        for name, value in alone[-1].items():
            for other in (batch[name][index], beside[name][0]):
                differences[name] = max(differences[name], (other - value[0]).abs().max().item())
    return differences, alone


def in_double_precision(networks):
    return tuple(copy.deepcopy(part).double() for part in networks)


def test_every_explainer_returns_normalized_maps(networks):
    classifier, generator, encoder, images = networks
    for name, explainer in every_explainer(classifier, generator, encoder).items():
        outputs = explained(explainer, images)
        for key in [key for key in outputs if key.startswith("map")]:
            maps = outputs[key]
            assert maps.shape == (3, 1, *SIZE) and maps.dtype == torch.float32, (name, key)
            peaks = maps.flatten(1).amax(1)
            assert maps.min() >= 0 and all(peak in (0.0, 1.0) for peak in peaks.tolist()), (name, key)


def test_each_image_is_explained_as_if_alone(networks):
    """An image's explanation must not depend on the other images of its batch (the node and the evaluation bundle
    batch whatever arrives), checked for every explainer and every output on two images A and B: A and B together,
    each alone, each beside a very different image (its intensity inverse).

    * float64, exactly: rounding is ~1e-16 there, so a difference can only come from coupling (a batch-mean loss under
      Adam, shared optimiser state, batch statistics). Measured here: at most 1.5e-12 (medXGAN), bound 1e-10.
    * float32: a batch and a single call round differently (BLAS and oneDNN pick kernels by batch size and CPU). The
      bound is measured where the test runs: 8 times the largest float32 error of a single call against float64 on
      the same output, plus 4 float32 ulp of 1. Measured here: at most 2.7 times that error (the refinement's former
      |change| kink turned such rounding into a 1e-3 difference of the counterfactual).
    """
    exact_networks = in_double_precision(networks)
    explainers = every_explainer(*networks[:3])
    exact_explainers = every_explainer(*exact_networks[:3])
    for name, explainer in explainers.items():
        exact_differences, exact_alone = batch_and_single_differences(exact_explainers[name], exact_networks[3][:2])
        coupled = {key: value for key, value in exact_differences.items() if value > 1e-10}
        assert not coupled, f"{name}: an image's result depends on its batch: {coupled}"

        differences, alone = batch_and_single_differences(explainer, networks[3][:2])
        for key, difference in differences.items():
            rounding = max(
                (a[key].double() - e[key]).abs().max().item() for a, e in zip(alone, exact_alone, strict=True)
            )
            bound = 8 * rounding + 4 * torch.finfo(torch.float32).eps
            assert difference <= bound, f"{name} {key}: batch vs single {difference:.2e} > {bound:.2e}"


def test_integrated_gradients_attributions_add_up(networks):
    classifier, _, _, images = networks
    explainer = IntegratedGradientsExplainer(classifier, steps=64)
    with torch.enable_grad():
        attributions = explainer.attribute(images)
    from medxgan_monai.explain import class_probability

    with torch.no_grad():
        expected = class_probability(classifier, images) - class_probability(classifier, torch.zeros_like(images))
    assert torch.allclose(attributions.flatten(1).sum(1), expected, atol=1e-3)


def test_latent_path_ig_is_complete_and_the_paper_variant_is_available(networks):
    classifier, generator, _, _ = networks
    z_a, z_p = generator.sample_codes(torch.ones(2, dtype=torch.long), torch.Generator().manual_seed(3))
    attributions, gap = latent_path_integrated_gradients(generator, classifier, z_a, z_p, steps=64, chunk_size=20)
    assert attributions.shape == (2, 1, *SIZE)
    assert (gap < 1e-3).all(), gap
    coarse, coarse_gap = latent_path_integrated_gradients(generator, classifier, z_a, z_p, steps=2)
    assert (coarse_gap >= gap - 1e-6).all()
    paper, _ = latent_path_integrated_gradients(generator, classifier, z_a, z_p, steps=10, variant="paper")
    assert paper.shape == attributions.shape
    with pytest.raises(ValueError, match="variant"):
        latent_path_integrated_gradients(generator, classifier, z_a, z_p, variant="other")


def test_inversion_reduces_its_loss_and_leaves_the_generator_alone(networks):
    classifier, generator, encoder, _ = networks
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    target = generator(*generator.sample_codes(torch.tensor([0, 1]), torch.Generator().manual_seed(5))).detach()
    _, _, start = LatentInverter(generator, classifier, encoder, steps=0)(target)
    z_a, z_p, end = LatentInverter(generator, classifier, encoder, steps=60, learning_rate=5e-2)(target)
    assert (end < start).all()
    assert all(torch.equal(v, before[k]) for k, v in generator.state_dict().items())
    _, _, from_zeros = LatentInverter(generator, classifier, None, steps=0)(target)
    assert from_zeros.shape == (2,)


def test_medxgan_methods_give_their_counterfactuals_and_sweep(networks):
    classifier, generator, encoder, images = networks
    settings = {"inversion_steps": 5, "ig_steps": 6, "latent_ig_steps": 6, "sweep_frames": 4}
    explainers = Explainers(["medxgan_ig", "medxgan", "medxgan_lig"], classifier, generator, encoder, settings)
    with torch.no_grad():
        attributions, seconds = explainers.explain(images)
    assert list(attributions) == list(seconds) == ["medxgan_ig", "medxgan", "medxgan_lig"]
    difference = attributions["medxgan"]
    sweep = difference.sweep
    assert len(difference) == 3 and difference.counterfactual.shape == images.shape
    assert sweep.frames.shape == (3, 4, 1, *SIZE) and sweep.probabilities.shape == (3, 4)
    assert torch.equal(sweep.frames[:, 0], difference.counterfactual)
    assert torch.equal(normalize_saliency(sweep.frames[:, -1] - sweep.frames[:, 0]), difference.maps)
    # the latent path starts at the same counterfactual G(z_a, 0): one inversion served both
    assert torch.allclose(attributions["medxgan_lig"].counterfactual, difference.counterfactual, atol=1e-6)
    assert attributions["medxgan_lig"].details["completeness_gap"].shape == (3,)
    residual = (images - (sweep.frames[:, -1] - sweep.frames[:, 0])).clamp(0, 1)
    assert torch.allclose(attributions["medxgan_ig"].counterfactual, residual, atol=1e-6)
    with pytest.raises(ValueError, match="sweep_frames"):
        MedXGANDifference(classifier, generator, explainers.inverter, sweep_frames=1)


def test_only_the_requested_methods_are_built_and_run(networks):
    """``--methods gradcam`` loads no generator and runs no inversion; the medXGAN methods share one inversion."""
    classifier, generator, encoder, images = networks
    loaded = []

    def loader(network):
        return lambda: loaded.append(network) or network

    gradcam_only = Explainers(["gradcam"], classifier, loader(generator), loader(encoder))
    with torch.no_grad():
        attributions, _ = gradcam_only.explain(images)
    assert list(attributions) == ["gradcam"] and loaded == [] and gradcam_only.inverter is None

    both = Explainers(
        ["medxgan", "medxgan_lig"], classifier, loader(generator), loader(encoder), {"inversion_steps": 2}
    )
    assert loaded == [generator, encoder], "each network is loaded once"
    inversions = []
    original = both.inverter._invert
    both.inverter._invert = lambda *args: inversions.append(1) or original(*args)
    with torch.no_grad():
        both.explain(images)
    assert len(inversions) == len(images), "one inversion per image for both methods"
    with pytest.raises(ValueError, match="unknown or no explanation method"):
        Explainers(["medxgan_typo"], classifier)
    with pytest.raises(ValueError, match="unknown explanation setting"):
        Explainers(["ig"], classifier, settings={"ig_step": 5})
    with pytest.raises(ValueError, match="needs the generator"):
        Explainers(["medxgan"], classifier)


def test_explanation_benchmark_measures_each_method_at_a_tiny_size():
    from benchmarks.benchmark_explain import benchmark_methods, measure

    for method in benchmark_methods():
        result = measure(size=16, method=method, images=1, device="cpu", paper_steps=2)
        assert result["ms_per_image"] > 0 and result["peak_memory_mb"] > 0, method


def test_counterfactual_term_lowers_the_counterfactual_probability(networks):
    classifier, generator, encoder, images = networks
    from medxgan_monai.explain import class_probability

    def counterfactual_probability(weight: float) -> torch.Tensor:
        inverter = LatentInverter(
            generator, classifier, encoder, steps=30, learning_rate=5e-2, counterfactual_weight=weight
        )
        z_a, z_p, _ = inverter(images)
        with torch.no_grad():
            return class_probability(classifier, generator(z_a, torch.zeros_like(z_p)))

    assert (counterfactual_probability(50.0) < counterfactual_probability(0.0)).all()


def test_image_ig_from_the_residual_counterfactual_adds_up(networks):
    classifier, generator, encoder, images = networks
    inverter = LatentInverter(generator, classifier, encoder, steps=0)
    explainer = MedXGANIntegratedGradients(classifier, generator, inverter, ig_steps=64)
    with torch.no_grad():
        raw = explainer.raw_attribution(images)
    from medxgan_monai.explain import class_probability

    with torch.no_grad():
        expected = class_probability(classifier, images) - raw.counterfactual_probability
    assert torch.allclose(raw.maps.flatten(1).sum(1), expected, atol=1e-3)
    # the reported completeness gap is the measured one (the evaluation writes it per image)
    measured = (raw.maps.flatten(1).sum(1) - expected).abs()
    assert torch.allclose(raw.details["completeness_gap"], measured, atol=1e-5)


def test_ig_reports_its_completeness_gap_which_shrinks_with_steps(networks):
    from medxgan_monai.explain import IntegratedGradientsExplainer, class_probability

    classifier, _, _, images = networks
    gaps = {}
    for steps in (2, 64):
        attribution = IntegratedGradientsExplainer(classifier, steps=steps).explain(images)
        gaps[steps] = attribution.details["completeness_gap"]
        raw = IntegratedGradientsExplainer(classifier, steps=steps).attribute(images)
        with torch.no_grad():
            change = class_probability(classifier, images) - class_probability(classifier, torch.zeros_like(images))
        assert torch.allclose(gaps[steps], (raw.flatten(1).sum(1) - change).abs(), atol=1e-5)
    assert gaps[2].shape == (images.shape[0],)
    assert gaps[64].mean() < gaps[2].mean()


class BrightnessClassifier(torch.nn.Module):
    """Calls an image positive the brighter it is: a classifier whose counterfactual direction is known."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = 20.0 * (images.flatten(1).mean(1) - 0.3)
        return torch.stack([-score, score], dim=1)


def test_refined_residual_counterfactual_moves_towards_negative_alone_and_in_a_batch(networks):
    _, generator, encoder, images = networks
    classifier = FrozenClassifier(BrightnessClassifier())
    from medxgan_monai.explain import class_probability

    with torch.no_grad():
        z_a, z_p = encoder(images)
        reconstruction = generator(z_a, z_p)
        unrefined = (images - (reconstruction - generator(z_a, torch.zeros_like(z_p)))).clamp(0, 1)
    before = {name: p.clone() for name, p in generator.state_dict().items()}
    plain, plain_probability = CounterfactualRefiner(generator, classifier, steps=0)(images, z_a, z_p)
    assert torch.allclose(plain, unrefined, atol=1e-6)
    assert torch.allclose(plain_probability, class_probability(classifier, unrefined), atol=1e-6)

    refiner = CounterfactualRefiner(generator, classifier, steps=25, learning_rate=0.05, sparsity_weight=0.1)
    refined, refined_probability = refiner(images, z_a, z_p)
    # with a small sparsity weight the classifier term dominates: every counterfactual moves towards negative
    assert (refined_probability < plain_probability).all()
    assert refined.min() >= 0 and refined.max() <= 1 and not torch.allclose(refined, plain)
    single = torch.cat(
        [refiner(image[None], a[None], p[None])[0] for image, a, p in zip(images, z_a, z_p, strict=True)]
    )
    assert torch.allclose(refined, single, atol=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in generator.state_dict().items())
    with pytest.raises(ValueError, match="steps"):
        CounterfactualRefiner(generator, classifier, steps=-1)

    inverter = LatentInverter(generator, classifier, encoder, steps=0)
    explainer = MedXGANIntegratedGradients(
        classifier,
        generator,
        inverter,
        counterfactual_steps=25,
        counterfactual_learning_rate=0.05,
        counterfactual_sparsity=0.1,
        ig_steps=4,
    )
    with torch.no_grad():
        attribution = explainer.explain(images)
    assert torch.allclose(attribution.counterfactual, refined, atol=1e-5)
    assert torch.allclose(attribution.counterfactual_probability, refined_probability, atol=1e-5)


def test_refinement_moves_a_saturated_positive_and_keeps_the_sparsest_valid_iterate(networks):
    _, generator, encoder, images = networks
    from medxgan_monai.explain.medxgan import RefinementStep, _SparsestValid

    class Saturated(BrightnessClassifier):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return 1000.0 * super().forward(images)  # p rounds to exactly 1 in float32

    classifier = FrozenClassifier(Saturated())
    with torch.no_grad():
        z_a, z_p = encoder(images)
    plain, plain_probability = CounterfactualRefiner(generator, classifier, steps=0)(images, z_a, z_p)
    assert (plain_probability == 1).all()
    refiner = CounterfactualRefiner(generator, classifier, steps=10, learning_rate=0.05, sparsity_weight=0.0)
    refined, _ = refiner(images, z_a, z_p)
    assert (refined.flatten(1).mean(1) < plain.flatten(1).mean(1)).all(), "the gradient survives saturation"

    best = _SparsestValid(2, torch.device("cpu"))
    frames = torch.arange(4.0).view(4, 1, 1).expand(4, 2, 1)  # iterate k fills both images with value k
    for frame, probability, sparsity in zip(
        frames,
        [[0.9, 0.9], [0.4, 0.8], [0.3, 0.7], [0.6, 0.6]],
        [[0.1, 0.1], [0.2, 0.2], [0.1, 0.3], [0.05, 0.05]],
        strict=True,
    ):
        best.update(RefinementStep(None, frame, torch.tensor(probability), torch.tensor(sparsity)))
    # image 0: valid at iterates 1 and 2, iterate 2 the sparser; image 1: never valid, so the last iterate
    assert best.counterfactual[:, 0].tolist() == [2.0, 3.0]
    assert best.probability.tolist() == pytest.approx([0.3, 0.6])


def test_every_registered_setting_is_a_bundle_setting():
    """Each method's and the inversion's settings in the registry can be set as ``--<setting>`` on the bundle:
    ``inference.json`` has the top-level value and passes it in ``explainers#settings`` (a setting missing there
    would be accepted on the command line and silently ignored)."""
    import json
    from pathlib import Path

    from medxgan_monai.explain import INVERSION, METHODS

    config = json.loads((Path(__file__).resolve().parents[1] / "bundle/configs/inference.json").read_text())
    passed = config["explainers"]["settings"]
    for method in (INVERSION, *METHODS.values()):
        for setting in method.options:
            assert passed.get(setting) == f"@{setting}" and setting in config, (method.name, setting)
    assert set(passed) == {s for method in (INVERSION, *METHODS.values()) for s in method.options}
    # the registry reports each setting's default, the explainer's own (the bundle's product defaults may differ)
    assert METHODS["ig"].defaults() == {"ig_steps": 50} and config["ig_steps"] == 50  # the IG-50 yardstick
    assert METHODS["medxgan_ig"].defaults()["medxgan_ig_steps"] == 50 and config["medxgan_ig_steps"] == 16
    assert INVERSION.defaults()["inversion_steps"] == 1000 and config["inversion_steps"] == 0


def test_an_explainer_implements_attribute_or_raw_attribution():
    """Each default is written in terms of the other: a subclass implementing neither is refused when defined."""
    from medxgan_monai.explain import SaliencyExplainer

    with pytest.raises(TypeError, match="attribute"):

        class Nothing(SaliencyExplainer):
            pass
