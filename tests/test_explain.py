"""Explainers on tiny networks: call shape, the shared map convention, batch independence, IG completeness."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet

from medxgan_monai.explain import (
    CounterfactualRefiner,
    GradCAMExplainer,
    InputGradientExplainer,
    IntegratedGradientsExplainer,
    LatentInverter,
    LatentShiftExplainer,
    MedXGANExplainer,
    OcclusionExplainer,
    latent_path_integrated_gradients,
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


def test_every_baseline_returns_normalized_maps_and_batches_like_single_calls(networks):
    classifier, generator, encoder, images = networks
    explainers = [
        GradCAMExplainer(classifier, "class_layers.relu"),
        IntegratedGradientsExplainer(classifier, steps=8),
        InputGradientExplainer(classifier),
        OcclusionExplainer(classifier, mask_size=8),
        LatentShiftExplainer(classifier, generator, encoder, search_steps=3, frames=3),
    ]
    for explainer in explainers:
        with torch.no_grad():  # evaluators run under no_grad: explainers must enable gradients themselves
            maps = explainer(images)
        assert maps.shape == (3, 1, *SIZE), explainer.name
        peaks = maps.flatten(1).amax(1)
        assert maps.min() >= 0 and all(peak in (0.0, 1.0) for peak in peaks.tolist()), explainer.name
        single = torch.cat([explainer(image[None]) for image in images])
        assert torch.allclose(maps, single, atol=1e-4), f"{explainer.name}: batch differs from single calls"


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


def test_medxgan_explanation_holds_every_part_and_batches_like_single_calls(networks):
    classifier, generator, encoder, images = networks
    explainer = MedXGANExplainer(classifier, generator, encoder, inversion_steps=5, ig_steps=6, sweep_frames=4)
    with torch.no_grad():
        explanation = explainer(images)
    assert len(explanation) == 3
    assert explanation.counterfactual.shape == explanation.reconstruction.shape == images.shape
    assert explanation.sweep_frames.shape == (3, 4, 1, *SIZE) and explanation.sweep_probabilities.shape == (3, 4)
    assert torch.allclose(explanation.sweep_frames[:, 0], explanation.counterfactual, atol=1e-6)
    assert torch.allclose(explanation.sweep_frames[:, -1], explanation.reconstruction, atol=1e-6)
    assert torch.allclose(explanation.difference, (explanation.reconstruction - explanation.counterfactual).abs())
    assert set(explanation.maps) == {"medxgan", "medxgan_lig", "medxgan_ig"}
    residual = (images - (explanation.reconstruction - explanation.counterfactual)).clamp(0, 1)
    assert torch.allclose(explanation.residual_counterfactual, residual, atol=1e-6)
    with pytest.raises(ValueError, match="sweep_frames"):
        MedXGANExplainer(classifier, generator, encoder, sweep_frames=1)
    for name in explanation.maps:
        single = torch.cat([explainer(image[None]).maps[name] for image in images])
        assert torch.allclose(explanation.maps[name], single, atol=1e-4), name


def test_explanation_benchmark_measures_each_method_at_a_tiny_size():
    from medxgan_monai.cli.benchmark_explain import METHODS, measure

    for method in METHODS:
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
    explainer = MedXGANExplainer(classifier, generator, encoder, inversion_steps=0, ig_steps=64, sweep_frames=2)
    with torch.no_grad():
        explanation = explainer(images)
    with torch.enable_grad():
        attributions = explainer.image_ig.attribute(images, baselines=explanation.residual_counterfactual)
    expected = explanation.probability - explanation.residual_counterfactual_probability
    assert torch.allclose(attributions.flatten(1).sum(1), expected, atol=1e-3)


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

    explainer = MedXGANExplainer(
        classifier,
        generator,
        encoder,
        inversion_steps=0,
        counterfactual_steps=25,
        counterfactual_learning_rate=0.05,
        counterfactual_sparsity=0.1,
        ig_steps=4,
        sweep_frames=2,
    )
    with torch.no_grad():
        explanation = explainer(images)
    assert torch.allclose(explanation.residual_counterfactual, refined, atol=1e-5)
    assert torch.equal(
        explanation.counterfactual_probability_of("medxgan_ig"), explanation.residual_counterfactual_probability
    )
    assert torch.equal(explanation.counterfactual_probability_of("medxgan"), explanation.counterfactual_probability)


def test_refinement_moves_a_saturated_positive_and_keeps_the_sparsest_valid_iterate(networks):
    _, generator, encoder, images = networks
    from medxgan_monai.explain.medxgan import _SparsestValid

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
        best.update(frame, torch.tensor(probability), torch.tensor(sparsity))
    # image 0: valid at iterates 1 and 2, iterate 2 the sparser; image 1: never valid, so the last iterate
    assert best.counterfactual[:, 0].tolist() == [2.0, 3.0]
    assert best.probability.tolist() == pytest.approx([0.3, 0.6])
