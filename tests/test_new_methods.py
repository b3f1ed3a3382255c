"""SmoothGrad and Grad-CAM++, added through the method registry alone: their maps, their exact identities with the
input gradient and Grad-CAM, and their settings through :class:`Explainers`. (tests/test_explain.py checks them with
every other registered method: normalized maps, batch independence in float64 and float32.)"""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet
from monai.visualize import GradCAMpp

from medxgan_monai.explain import (
    METHODS,
    Explainers,
    GradCAMExplainer,
    GradCAMPlusPlusExplainer,
    InputGradientExplainer,
    SmoothGradExplainer,
)
from medxgan_monai.networks import FrozenClassifier

SIZE = (32, 40)  # non-square on purpose; the DenseNet's last feature map is 4 x 5
NEW_METHODS = ["smoothgrad", "gradcampp"]


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    classifier = FrozenClassifier(DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2, 2)))
    images = torch.rand(5, 1, *SIZE)
    return classifier, images


def explain(explainer, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # as in the evaluators: the explainers enable gradients themselves
        return explainer(images)


def test_new_methods_are_registered_with_their_options():
    assert METHODS["smoothgrad"].defaults() == {
        "smoothgrad_samples": 50,
        "smoothgrad_noise": 0.15,
        "smoothgrad_seed": 0,
    }
    assert (
        METHODS["gradcampp"].defaults()
        == METHODS["gradcam"].defaults()
        == {"gradcam_target_layers": ("class_layers.relu")}
    )
    assert METHODS["smoothgrad"].needs == METHODS["gradcampp"].needs == ("classifier",)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_maps_are_normalized_and_the_same_call_to_call(networks, method):
    classifier, images = networks
    explainer = Explainers([method], classifier, settings={"smoothgrad_samples": 4}).explainers[method]
    maps = explain(explainer, images)
    assert maps.shape == (5, 1, *SIZE) and maps.dtype == torch.float32
    assert maps.min() >= 0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(5))
    assert torch.equal(explain(explainer, images), maps)


def test_smoothgrad_of_one_noiseless_sample_is_the_input_gradient(networks):
    """SmoothGrad averages the ``gradient`` method's map (of the target-class probability) over noisy copies: with
    one copy and no noise it is that map, bit for bit image by image (the gradient explainer runs the batch at once,
    which rounds differently in float32)."""
    classifier, images = networks
    smoothgrad = SmoothGradExplainer(classifier, samples=1, noise=0.0)
    gradient = InputGradientExplainer(classifier)
    with torch.enable_grad():
        for image in images:
            assert torch.equal(smoothgrad.attribute(image[None]), gradient.attribute(image[None]))
    # with a single logit, the probability is its sigmoid and the explained class may still be 0 or 1
    single_logit = FrozenClassifier(DenseNet(2, 1, 1, init_features=8, growth_rate=4, block_config=(2, 2)))
    with torch.enable_grad():
        for target in (0, 1):
            assert torch.equal(
                SmoothGradExplainer(single_logit, samples=1, noise=0.0, target=target).attribute(images[:1]),
                InputGradientExplainer(single_logit, target=target).attribute(images[:1]),
            )


def test_smoothgrad_noise_is_seeded_per_image_and_leaves_the_global_random_state_alone(networks):
    classifier, images = networks
    explainer = SmoothGradExplainer(classifier, samples=3, noise=0.2, seed=7)
    state = torch.get_rng_state()
    maps = explain(explainer, images)
    assert torch.equal(torch.get_rng_state(), state)
    # the image's noise does not depend on its place in the batch: reversed batch, reversed maps
    assert torch.equal(explain(explainer, images.flip(0)), maps.flip(0))
    assert not torch.equal(explain(SmoothGradExplainer(classifier, samples=3, noise=0.2, seed=8), images), maps)
    assert not torch.equal(explain(SmoothGradExplainer(classifier, samples=3, noise=0.0), images), maps)


def test_gradcampp_explains_a_batch_as_its_images_alone(networks):
    """MONAI 1.6.1's GradCAMpp broadcasts each image's exp(score) over the last spatial axis of the gradients, not the
    batch: it fails for most batch sizes and, when the batch size equals that axis (5 here), silently mixes images.
    The explainer runs one image at a time."""
    classifier, images = networks
    cam = GradCAMpp(classifier.network, target_layers="class_layers.relu", postprocessing=lambda maps: maps)
    with pytest.raises(RuntimeError):
        cam(images[:3].clone().requires_grad_(True), class_idx=1)
    explainer = GradCAMPlusPlusExplainer(classifier)
    batch = explain(explainer, images)
    alone = torch.cat([explain(explainer, image[None]) for image in images])
    assert torch.allclose(batch, alone, atol=1e-6)


def test_gradcampp_differs_from_gradcam_on_the_same_layer(networks):
    classifier, images = networks
    for layer in ("class_layers.relu", "features.transition1.relu"):
        gradcam = explain(GradCAMExplainer(classifier, layer), images)
        gradcampp = explain(GradCAMPlusPlusExplainer(classifier, layer), images)
        assert gradcam.shape == gradcampp.shape
        assert (gradcam - gradcampp).abs().amax() > 1e-3, layer


def test_new_methods_take_their_settings_through_explainers(networks):
    classifier, images = networks
    settings = {
        "smoothgrad_samples": 2,
        "smoothgrad_noise": 0.1,
        "smoothgrad_seed": 3,
        "gradcam_target_layers": "features.transition1.relu",
    }
    explainers = Explainers([*NEW_METHODS, "gradcam"], classifier, settings=settings)
    smoothgrad, gradcampp = (explainers.explainers[name] for name in NEW_METHODS)
    assert (smoothgrad.samples, smoothgrad.noise, smoothgrad.seed) == (2, 0.1, 3)
    assert gradcampp.cam.nn_module.target_layers == ("features.transition1.relu",)
    with torch.no_grad():
        attributions, seconds = explainers.explain(images)
    assert list(attributions) == list(seconds) == [*NEW_METHODS, "gradcam"]
    expected = explain(SmoothGradExplainer(classifier, samples=2, noise=0.1, seed=3), images)
    assert torch.equal(attributions["smoothgrad"].maps, expected)
    assert attributions["smoothgrad"].counterfactual is None and attributions["gradcampp"].counterfactual is None
    with pytest.raises(ValueError, match="samples >= 1"):
        Explainers(["smoothgrad"], classifier, settings={"smoothgrad_samples": 0})
