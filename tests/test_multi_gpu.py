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
