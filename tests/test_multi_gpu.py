"""Distributed data-parallel classifier training (multi_gpu_train.json) with torchrun: two CPU processes, gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import BUNDLE_ROOT
from mlflow.tracking import MlflowClient
from monai.networks.nets import DenseNet


def test_two_process_ddp_training_writes_one_checkpoint_and_one_mlflow_run(tiny_demo, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    configs = [str(BUNDLE_ROOT / "configs" / name) for name in ("train_classifier.json", "multi_gpu_train.json")]
    out = tmp_path / "classifier"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run"]
    command += ["--config_file", str(configs), "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(tiny_demo)]
    command += ["--output_dir", str(out), "--image_size", "[32,32]", "--network_def#block_config", "[2,2]"]
    command += ["--batch_size", "4", "--train#trainer#max_epochs", "2", "--device", "$torch.device('cpu')"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlruns.db'}"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    network = DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2))
    network.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))  # no "module." prefix
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_classifier").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2], "rank 0 logs once"
    assert len(list(out.glob("config_*.json"))) == 1, "one executed-config record"


def test_two_process_ddp_gan_training_exports_plain_weights_and_one_mlflow_run(tiny_demo, tmp_path):
    from medxgan_monai.networks import MedXGANEncoder, MedXGANGenerator

    classifier_ckpt = tmp_path / "classifier.pt"
    torch.save(DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(2, 2)).state_dict(), classifier_ckpt)
    names = ("train_classifier.json", "train_gan.json", "multi_gpu_train_gan.json")
    configs = [str(BUNDLE_ROOT / "configs" / name) for name in names]
    out = tmp_path / "gan"
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "monai.bundle", "run", "--config_file", str(configs), "--bundle_root", str(BUNDLE_ROOT)]
    overrides = {
        "dataset_dir": str(tiny_demo),
        "output_dir": str(out),
        "classifier_ckpt": str(classifier_ckpt),
        "image_size": "[32,32]",
        "network_def#block_config": "[2,2]",
        "batch_size": "4",
        "anatomy_dim": "16",
        "pathology_dim": "4",
        "generator#channels": "[16,8]",
        "discriminator#channels": "[8,16]",
        "encoder#channels": "[8,16]",
        "validation#num_samples": "8",
        "train#trainer#max_epochs": "1",
        "train#trainer#epoch_length": "2",
        "train#trainer#encoder_start_epoch": "1",
        "train#trainer#gan_stop_epoch": "None",
        "device": "$torch.device('cpu')",
    }
    for key, value in overrides.items():
        command += [f"--{key}", value]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    generator = MedXGANGenerator(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(16, 8))
    generator.load_state_dict(torch.load(out / "models" / "generator.pt", weights_only=True))
    encoder = MedXGANEncoder(image_size=32, anatomy_dim=16, pathology_dim=4, channels=(8, 16))
    encoder.load_state_dict(torch.load(out / "models" / "encoder.pt", weights_only=True))
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_gan").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "e_loss")] == [1]
