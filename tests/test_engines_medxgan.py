"""The medXGAN trainer on random data: losses, frozen classifier, EMA, and a bundle run with resume."""

from __future__ import annotations

import copy
import json

import torch
from conftest import BUNDLE_ROOT
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigWorkflow
from monai.networks.nets import DenseNet

from medxgan_monai.engines import MedXGANKeys, MedXGANTrainer
from medxgan_monai.networks import MedXGANDiscriminator, MedXGANEncoder, MedXGANGenerator

CONFIGS = BUNDLE_ROOT / "configs"


def _tiny_setup():
    torch.manual_seed(0)
    generator = MedXGANGenerator(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(16, 8))
    discriminator = MedXGANDiscriminator(image_size=32, channels=(8, 16), num_classes=2)
    encoder = MedXGANEncoder(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(8, 16))
    classifier = DenseNet(2, 1, 2, init_features=8, growth_rate=4, block_config=(2, 2))
    data = [{"image": torch.rand(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1])} for _ in range(3)]
    return generator, discriminator, encoder, classifier, data


def _tiny_trainer(generator, discriminator, encoder, classifier, data, **kwargs) -> MedXGANTrainer:
    return MedXGANTrainer(
        "cpu",
        1,
        data,
        generator,
        torch.optim.Adam(generator.parameters(), 1e-3),
        discriminator,
        torch.optim.Adam(discriminator.parameters(), 1e-3),
        classifier,
        e_network=encoder,
        e_optimizer=None if encoder is None else torch.optim.Adam(encoder.parameters(), 1e-3),
        **kwargs,
    )


def test_one_epoch_updates_g_d_e_but_not_the_classifier():
    generator, discriminator, encoder, classifier, data = _tiny_setup()
    before = {name: copy.deepcopy(m.state_dict()) for name, m in (("g", generator), ("c", classifier))}
    trainer = _tiny_trainer(
        generator,
        discriminator,
        encoder,
        classifier,
        data,
        r1_gamma=1.0,
        ema_decay=0.5,
        lambda_negative_code=1.0,
        lambda_minimal_change=1.0,
        lambda_counterfactual=1.0,
    )
    trainer.run()
    output = trainer.state.output
    for key in MedXGANKeys:
        assert key in output and torch.isfinite(torch.tensor(output[key])), key
    for name, value in classifier.state_dict().items():
        assert torch.equal(value, before["c"][name]), f"classifier changed: {name}"
    assert any(not torch.equal(v, before["g"][k]) for k, v in generator.state_dict().items())
    ema_weight = trainer.g_ema.head.weight
    assert not torch.equal(ema_weight, generator.head.weight) and not ema_weight.requires_grad
    assert not trainer.g_ema.training


def test_gan_bundle_trains_resumes_and_keeps_one_mlflow_run(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    common = {
        "bundle_root": str(BUNDLE_ROOT),
        "dataset_dir": str(tiny_demo),
        "image_size": [32, 32],
        "batch_size": 4,
        "device": "cpu",
        "network_def#block_config": [2, 2],
    }
    # an untrained classifier is enough to exercise the GAN workflow
    classifier_ckpt = tmp_path / "classifier.pt"
    torch.save(DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2)).state_dict(), classifier_ckpt)
    gan_dir = tmp_path / "gan"
    overrides = {
        **common,
        "output_dir": str(gan_dir),
        "classifier_ckpt": str(classifier_ckpt),
        "anatomy_dim": 16,
        "pathology_dim": 4,
        "generator#channels": [16, 8],
        "discriminator#channels": [8, 16],
        "encoder#channels": [8, 16],
        "validation#num_samples": 20,
        "train#trainer#encoder_start_epoch": 2,
        "train#trainer#epoch_length": 2,
    }
    for epochs, resume in ((1, False), (2, True)):
        workflow = ConfigWorkflow(
            workflow_type="train",
            config_file=[str(CONFIGS / "train_classifier.json"), str(CONFIGS / "train_gan.json")],
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=str(CONFIGS / "logging.conf"),
            resume=resume,
            **overrides,
            **{"train#trainer#max_epochs": epochs},
            # the finished run registers the explainer in the MLflow registry
            register_model_name="gan-explainer" if resume else None,
        )
        workflow.initialize()
        workflow.check_properties()
        workflow.run()
        workflow.finalize()
        assert workflow.parser.get_parsed_content("train#trainer").state.epoch == epochs
    for name in ("generator.pt", "encoder.pt"):
        assert (gan_dir / "models" / name).is_file()
    generator = MedXGANGenerator(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(16, 8))
    generator.load_state_dict(torch.load(gan_dir / "models" / "generator.pt", weights_only=True))
    client = MlflowClient(tracking_uri=f"sqlite:///{gan_dir / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medxgan_gan").experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    (version,) = client.search_model_versions("name='gan-explainer'")
    assert version.run_id != run_id and int(version.version) == 1
    assert [m.step for m in client.get_metric_history(run_id, "g_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "val_cf_validity")] == [1, 2]
    expected = ("val_anatomy_ssim", "val_fd_negative", "val_inversion_psnr", "val_inversion_valid_flip_rate", "d_loss")
    for metric in expected:
        assert metric in runs[0].data.metrics, metric
    samples = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert samples == {"samples/epoch_0001.png", "samples/epoch_0002.png"}

    evaluation = ConfigWorkflow(
        workflow_type="train",
        config_file=[
            str(CONFIGS / "train_classifier.json"),
            str(CONFIGS / "train_gan.json"),
            str(CONFIGS / "evaluate_gan.json"),
        ],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        generator_ckpt=str(gan_dir / "models" / "generator.pt"),
        encoder_ckpt=str(gan_dir / "models" / "encoder.pt"),
        **overrides,
    )
    evaluation.initialize()
    evaluation.run()
    report = json.loads((gan_dir / "gan_evaluation_test.json").read_text())
    assert 0 <= report["cf_validity"] <= 1 and "inversion_valid_flip_rate" in report

    # a fresh run initialised from that checkpoint (fine-tuning): with G frozen from epoch 1, G stays as loaded
    checkpoint = gan_dir / "models" / "gan_checkpoint_epoch=2.pt"
    finetune = ConfigWorkflow(
        workflow_type="train",
        config_file=[str(CONFIGS / "train_classifier.json"), str(CONFIGS / "train_gan.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **{
            **overrides,
            "output_dir": str(tmp_path / "finetune"),
            "init_ckpt": str(checkpoint),
            "train#trainer#max_epochs": 1,
            "train#trainer#gan_stop_epoch": 1,
            "train#trainer#encoder_start_epoch": 1,
        },
    )
    finetune.initialize()
    finetune.run()
    finetune.finalize()
    loaded = torch.load(checkpoint, weights_only=True)["generator"]
    trained = finetune.parser.get_parsed_content("g_network").state_dict()
    assert all(torch.equal(trained[k], v) for k, v in loaded.items())


def test_benchmark_measures_a_tiny_size():
    from benchmarks.benchmark_gan import measure

    result = measure(size=16, batch_size=2, iterations=1, device="cpu", encoder=True)
    assert result["iterations_per_s"] > 0 and result["peak_memory_mb"] > 0 and result["size"] == 16
    from benchmarks.benchmark_training import measure_classifier

    assert measure_classifier(size=16, batch_size=2, iterations=1, device="cpu", amp=False)["images_per_s"] > 0


def test_frozen_gan_phase_trains_only_the_encoder():
    generator, discriminator, encoder, classifier, data = _tiny_setup()
    g_before = copy.deepcopy(generator.state_dict())
    e_before = copy.deepcopy(encoder.state_dict())
    trainer = _tiny_trainer(generator, discriminator, encoder, classifier, data, gan_stop_epoch=1)
    trainer.run()
    assert all(torch.equal(v, g_before[k]) for k, v in generator.state_dict().items())
    assert any(not torch.equal(v, e_before[k]) for k, v in encoder.state_dict().items())
    assert torch.isnan(torch.tensor(trainer.state.output[MedXGANKeys.G_LOSS]))


def test_minimal_change_term_is_added_for_positive_samples_only():
    generator, discriminator, encoder, classifier, data = _tiny_setup()
    trainer = _tiny_trainer(generator, discriminator, None, classifier, data, lambda_minimal_change=3.0)
    trainer.run()
    output = trainer.state.output
    expected = output[MedXGANKeys.G_ADV] + 2.0 * output[MedXGANKeys.G_CLS] + 3.0 * output[MedXGANKeys.G_MINIMAL]
    assert output[MedXGANKeys.G_MINIMAL] > 0
    assert abs(output[MedXGANKeys.G_LOSS] - expected) < 1e-4

    negatives_only = [{"image": torch.rand(4, 1, 32, 32), "label": torch.zeros(4, dtype=torch.long)}]
    trainer = _tiny_trainer(generator, discriminator, None, classifier, negatives_only, lambda_minimal_change=3.0)
    trainer.run()
    assert torch.isnan(torch.tensor(trainer.state.output[MedXGANKeys.G_MINIMAL]))


def test_minimal_change_term_shrinks_the_counterfactual_difference():
    def difference_after_training(weight: float) -> float:
        generator, discriminator, _, classifier, data = _tiny_setup()
        trainer = _tiny_trainer(generator, discriminator, None, classifier, data * 10, lambda_minimal_change=weight)
        trainer.run()
        z_a, z_p = generator.sample_codes(torch.ones(16, dtype=torch.long), torch.Generator().manual_seed(1))
        generator.eval()
        with torch.no_grad():
            return (generator(z_a, z_p) - generator(z_a, torch.zeros_like(z_p))).abs().mean().item()

    assert difference_after_training(100.0) < 0.5 * difference_after_training(0.0)
