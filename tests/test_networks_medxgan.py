"""medXGAN networks: code semantics, shapes in 2D and 3D, the frozen classifier."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet

from medxgan_monai.networks import (
    FrozenClassifier,
    MedXGANDiscriminator,
    MedXGANEncoder,
    MedXGANGenerator,
    pathology_codes,
)


def test_pathology_code_is_exactly_zero_for_the_negative_class():
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    codes = pathology_codes(labels, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes[labels == 0], torch.zeros(3, 7))
    assert (codes[labels == 1] != 0).all()
    z_a, z_p = MedXGANGenerator(image_size=32, anatomy_dim=12, pathology_dim=5, channels=(16, 8)).sample_codes(labels)
    assert z_a.shape == (6, 12) and torch.equal(z_p[labels == 0], torch.zeros(3, 5))


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_shapes_and_output_range(spatial_dims, size):
    generator = MedXGANGenerator(spatial_dims, image_size=size, anatomy_dim=10, pathology_dim=3, channels=(16, 8))
    discriminator = MedXGANDiscriminator(spatial_dims, image_size=size, channels=(8, 16), num_classes=2)
    encoder = MedXGANEncoder(spatial_dims, image_size=size, anatomy_dim=10, pathology_dim=3, channels=(8, 16))
    labels = torch.tensor([0, 1])
    images = generator(*generator.sample_codes(labels))
    assert images.shape == (2, 1, *([size] * spatial_dims))
    assert images.min() >= 0 and images.max() <= 1
    assert discriminator(images, labels).shape == (2,)
    z_a, z_p = encoder(images)
    assert z_a.shape == (2, 10) and z_p.shape == (2, 3)


def test_conditional_discriminator_needs_labels_and_sizes_are_checked():
    with pytest.raises(ValueError, match="labels are required"):
        MedXGANDiscriminator(image_size=32, channels=(8, 16), num_classes=2)(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        MedXGANGenerator(image_size=40, channels=(8, 8, 8, 8))


def test_frozen_classifier_never_trains_but_passes_gradients():
    network = DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2, 2))
    classifier = FrozenClassifier(network)
    classifier.train()
    assert not classifier.network.training
    images = torch.rand(3, 1, 32, 32, requires_grad=True)
    classifier.probability(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in classifier.parameters())
    assert classifier.features(images).shape[0] == 3


def test_class_probabilities_from_two_logits_or_one_and_wrap_keeps_a_frozen_classifier():
    from medxgan_monai.networks import FrozenClassifier, class_probabilities

    two = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert torch.allclose(class_probabilities(two), torch.softmax(two, dim=1))
    one = torch.tensor([[0.0], [2.0]])
    expected = torch.stack([1 - torch.sigmoid(one[:, 0]), torch.sigmoid(one[:, 0])], dim=1)
    assert torch.allclose(class_probabilities(one), expected)
    frozen = FrozenClassifier(torch.nn.Linear(3, 1))
    assert FrozenClassifier.wrap(frozen) is frozen
    assert isinstance(FrozenClassifier.wrap(torch.nn.Linear(3, 2)), FrozenClassifier)
    assert torch.allclose(frozen.probability(torch.zeros(2, 3)), class_probabilities(frozen(torch.zeros(2, 3)))[:, 1])
