"""Amortised refinement: the counterfactual encoder's trainer, validator, bundle workflow, and how the default map and
the inference bundle use it (or do without it)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import BUNDLE_ROOT, TINY_BUNDLE, TINY_TRAINING
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigWorkflow
from monai.networks.nets import DenseNet

from medxgan_monai.bundle import inference_config, run_inference, shipped_companion
from medxgan_monai.engines import CounterfactualEncoderKeys, CounterfactualEncoderTrainer
from medxgan_monai.explain import CounterfactualRefiner, Explainers
from medxgan_monai.handlers import CounterfactualEncoderValidator
from medxgan_monai.io.weights import load_weights
from medxgan_monai.networks import MedXGANEncoder, MedXGANGenerator

CONFIGS = BUNDLE_ROOT / "configs"
TRAINING = [str(CONFIGS / name) for name in ("train_classifier.json", "train_gan.json")]


def _networks(bias: float = 0.0):
    """Tiny untrained G, E, E' and a classifier whose positive logit is shifted by ``bias``."""
    torch.manual_seed(0)
    generator = MedXGANGenerator(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(16, 8)).eval()
    encoder = MedXGANEncoder(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(8, 16)).eval()
    classifier = DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2, 2)).eval()
    with torch.no_grad():
        classifier.class_layers.out.bias += torch.tensor([-bias, bias])
    return generator, encoder, copy.deepcopy(encoder), classifier


def test_refinement_starts_from_the_given_codes():
    generator, encoder, _, classifier = _networks()
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        z_a, z_p = encoder(images)
    refiner = CounterfactualRefiner(generator, classifier, steps=0)
    # starting at the reconstruction's own codes there is no change: the counterfactual is the image
    unchanged, _ = refiner(images, z_a, z_p, start=(z_a, z_p))
    torch.testing.assert_close(unchanged, images, atol=1e-6, rtol=0)
    # the default start is (z_a, 0)
    default, probability = refiner(images, z_a, z_p)
    explicit, explicit_probability = refiner(images, z_a, z_p, start=(z_a, torch.zeros_like(z_p)))
    torch.testing.assert_close(default, explicit)
    torch.testing.assert_close(probability, explicit_probability)


def test_default_map_starts_from_the_counterfactual_encoder():
    generator, encoder, counterfactual_encoder, classifier = _networks()
    with torch.no_grad():  # a different E' so that the two starts differ
        for parameter in counterfactual_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images = torch.rand(2, 1, 32, 32)
    settings = {"inversion_steps": 0, "counterfactual_steps": 0, "medxgan_ig_steps": 4}
    amortised = Explainers(
        ["medxgan_ig"], classifier, generator, encoder, settings, counterfactual_encoder=lambda: counterfactual_encoder
    )
    plain = Explainers(["medxgan_ig"], classifier, generator, encoder, settings)
    with torch.no_grad():
        reconstruction = generator(*encoder(images))
        expected = (images - (reconstruction - generator(*counterfactual_encoder(images)))).clamp(0, 1)
    counterfactual = amortised.explain(images)[0]["medxgan_ig"].counterfactual
    torch.testing.assert_close(counterfactual, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(plain.explain(images)[0]["medxgan_ig"].counterfactual, expected, atol=1e-3)


def test_trainer_lowers_the_refinement_objective_and_keeps_g_e_c_frozen():
    generator, encoder, counterfactual_encoder, classifier = _networks(bias=2.0)  # every image called positive
    frozen = {name: copy.deepcopy(m.state_dict()) for name, m in (("g", generator), ("e", encoder), ("c", classifier))}
    torch.manual_seed(1)
    data = [{"image": torch.rand(4, 1, 32, 32), "label": torch.ones(4)}]
    trainer = CounterfactualEncoderTrainer(
        "cpu",
        30,
        data,
        counterfactual_encoder,
        torch.optim.Adam(counterfactual_encoder.parameters(), 1e-2),
        generator,
        encoder,
        classifier,
        sparsity_weight=1.0,
    )
    validator = CounterfactualEncoderValidator(trainer.refiner, encoder, counterfactual_encoder, data)
    before = validator.compute()["val_cf_objective"]
    trainer.run()
    after = validator.compute()
    for key in CounterfactualEncoderKeys:
        assert torch.isfinite(torch.tensor(trainer.state.output[key])), key
    assert trainer.state.output[CounterfactualEncoderKeys.POSITIVES] == 4
    # E' starts as a copy of E (no change, the objective ~4.13 on this untrained classifier); measured: ~4.10 after
    assert after["val_cf_objective"] < before - 0.01, (before, after)
    assert 0 <= after["val_cf_validity"] <= 1 and after["val_cf_change"] > 0
    for name, module in (("g", generator), ("e", encoder), ("c", classifier)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, frozen[name][key]), f"{name} changed: {key}"


def test_without_called_positive_images_nothing_trains_and_validation_says_so(caplog):
    generator, encoder, counterfactual_encoder, classifier = _networks(bias=-20.0)  # every image called negative
    before = copy.deepcopy(counterfactual_encoder.state_dict())
    data = [{"image": torch.rand(2, 1, 32, 32), "label": torch.zeros(2)}]
    optimizer = torch.optim.Adam(counterfactual_encoder.parameters(), 1e-3)
    trainer = CounterfactualEncoderTrainer(
        "cpu", 1, data, counterfactual_encoder, optimizer, generator, encoder, classifier
    )
    trainer.run()
    assert trainer.state.output[CounterfactualEncoderKeys.POSITIVES] == 0
    assert all(torch.equal(v, before[k]) for k, v in counterfactual_encoder.state_dict().items())
    metrics = CounterfactualEncoderValidator(trainer.refiner, encoder, counterfactual_encoder, data).compute()
    assert all(value != value for value in metrics.values())  # NaN
    assert "calls no validation image positive" in caplog.text


def test_shipped_companion_only_for_the_bundles_own_weights(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("generator.pt", "encoder.pt"):
        (models / name).write_bytes(b"")
    own = {"generator_ckpt": models / "generator.pt", "encoder_ckpt": models / "encoder.pt"}
    assert shipped_companion(tmp_path, "counterfactual_encoder.pt", **own) is None  # the bundle lacks it
    (models / "counterfactual_encoder.pt").write_bytes(b"")
    assert shipped_companion(tmp_path, "counterfactual_encoder.pt", **own) == str(models / "counterfactual_encoder.pt")
    mine = {**own, "generator_ckpt": tmp_path / "my_generator.pt"}
    assert shipped_companion(tmp_path, "counterfactual_encoder.pt", **mine) is None
    assert load_weights(torch.nn.Linear(1, 1), None) is None


def test_inference_bundle_uses_it_with_the_shipped_gan_only(tmp_path):
    config = inference_config(BUNDLE_ROOT)
    if config.get_parsed_content("counterfactual_encoder_ckpt") is None:
        pytest.skip("this bundle ships no counterfactual encoder")
    assert config.get_parsed_content("counterfactual_steps") == 1
    own = inference_config(BUNDLE_ROOT, generator_ckpt=str(tmp_path / "my_generator.pt"))
    assert own.get_parsed_content("counterfactual_encoder_ckpt") is None
    assert own.get_parsed_content("counterfactual_steps") == 50


def test_bundle_trains_resumes_and_its_weights_explain(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    generator, encoder, _, _ = _networks()
    weights = {"generator_ckpt": tmp_path / "generator.pt", "encoder_ckpt": tmp_path / "encoder.pt"}
    torch.save(generator.state_dict(), weights["generator_ckpt"])
    torch.save(encoder.state_dict(), weights["encoder_ckpt"])
    classifier_ckpt = tmp_path / "classifier.pt"
    classifier = DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2))
    torch.save(classifier.state_dict(), classifier_ckpt)
    output_dir = tmp_path / "cf"
    overrides = {
        "bundle_root": str(BUNDLE_ROOT),
        "dataset_dir": str(tiny_demo),
        "output_dir": str(output_dir),
        "classifier_ckpt": str(classifier_ckpt),
        **{key: str(path) for key, path in weights.items()},
        **TINY_TRAINING,
    }
    for epochs, resume in ((1, False), (2, True)):
        workflow = ConfigWorkflow(
            workflow_type="train",
            config_file=[*TRAINING, str(CONFIGS / "train_counterfactual_encoder.json")],
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=str(CONFIGS / "logging.conf"),
            resume=resume,
            **overrides,
            **{"train#trainer#max_epochs": epochs},
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        assert workflow.parser.get_parsed_content("train#trainer").state.epoch == epochs
    trained = output_dir / "models" / "counterfactual_encoder.pt"
    assert trained.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_counterfactual_encoder").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_cf_objective")] == [1, 2]
    assert {"cf_loss", "cf_validity", "val_cf_validity", "val_cf_change"} <= set(run.data.metrics)

    report = run_inference(
        {
            **TINY_BUNDLE,
            "classifier_ckpt": str(classifier_ckpt),
            **{key: str(path) for key, path in weights.items()},
            "counterfactual_encoder_ckpt": str(trained),
            "counterfactual_steps": 1,
            "input": str(tiny_demo / "datalist.json"),
            "max_items": 2,
            "methods": ["medxgan_ig"],
            "output_dir": str(tmp_path / "explained"),
        },
        BUNDLE_ROOT,
    )
    assert not report.problems
    assert len(list((tmp_path / "explained").glob("*_medxgan_ig.nii.gz"))) == 2


def test_an_image_without_a_valid_counterfactual_goes_on_up_to_max_steps():
    generator, encoder, _, classifier = _networks(bias=2.0)  # called positive, hard to flip
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        z_a, z_p = encoder(images)
    calls = []

    class CountingRefiner(CounterfactualRefiner):
        def objective(self, *args):
            step = super().objective(*args)
            calls.append(bool((step.probability < 0.5).all()))
            return step

    # none becomes valid: each image runs to max_steps (7 steps, 8 scored iterates), not just steps
    CountingRefiner(generator, classifier, steps=2, max_steps=7)(images, z_a, z_p)
    assert calls == [False] * 16
    # max_steps equal to steps (the default) is the plain refinement: 2 steps, 3 scored iterates per image
    calls.clear()
    CountingRefiner(generator, classifier, steps=2)(images, z_a, z_p)
    assert len(calls) == 6
    # an image valid from the start stops after the minimum number of steps
    calls.clear()
    negative = _networks(bias=-20.0)
    CountingRefiner(negative[0], negative[3], steps=2, max_steps=7)(images, z_a, z_p)
    assert len(calls) == 6 and all(calls)
