"""Sample grids of G(z_a, 0) beside G(z_a, z_p) for fixed codes, saved as PNG and logged to MLflow each epoch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.io.atomic import atomic_output

__all__ = ["SampleGridSaver", "sample_grid"]


@torch.no_grad()
def sample_grid(
    generator: nn.Module, num_samples: int = 8, seed: int = 0, device: str | torch.device = "cpu"
) -> np.ndarray:
    """An 8-bit image with three rows: G(z_a, 0), G(z_a, z_p) and |difference| (scaled to its maximum).

    Codes come from a fixed ``seed`` so that grids of successive epochs show the same anatomies. 2D generators only
    (3D generators show their middle slice).
    """
    rng = torch.Generator(device="cpu").manual_seed(seed)
    z_a = torch.randn(num_samples, generator.anatomy_dim, generator=rng).to(device)
    z_p = torch.randn(num_samples, generator.pathology_dim, generator=rng).to(device)
    was_training = generator.training
    generator.eval()
    try:
        negative = generator(z_a, torch.zeros_like(z_p))[:, 0].float().cpu()
        positive = generator(z_a, z_p)[:, 0].float().cpu()
    finally:
        generator.train(was_training)
    if negative.ndim == 4:  # 3D: middle slice
        middle = negative.shape[-1] // 2
        negative, positive = negative[..., middle], positive[..., middle]
    difference = (positive - negative).abs()
    difference = difference / difference.max().clamp_min(1e-8)
    rows = [torch.cat(list(row.clamp(0, 1).transpose(1, 2)), dim=1) for row in (negative, positive, difference)]
    return (torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8)


class SampleGridSaver:
    """Save :func:`sample_grid` to ``output_dir/epoch_XXXX.png`` after each epoch; log it to MLflow when given.

    Args:
        generator: the generator to sample (usually the EMA copy).
        output_dir: where PNG files go.
        mlflow_handler: a ``monai.handlers.MLFlowHandler`` attached to the same engine; its active run receives the
            PNG under ``samples/``.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.SampleGridSaver", "generator": "@g_ema",
         "output_dir": "$@output_dir + '/samples'", "mlflow_handler": "@mlflow_handler"}
    """

    def __init__(
        self,
        generator: nn.Module,
        output_dir: str | os.PathLike,
        mlflow_handler=None,
        num_samples: int = 8,
        seed: int = 0,
        interval: int = 1,
    ) -> None:
        self.generator = generator
        self.output_dir = Path(output_dir)
        self.mlflow_handler = mlflow_handler
        self.num_samples = num_samples
        self.seed = seed
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        grid = sample_grid(self.generator, self.num_samples, self.seed, engine.state.device)
        path = self.output_dir / f"epoch_{engine.state.epoch:04d}.png"
        with atomic_output(path, overwrite=True) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        run = getattr(self.mlflow_handler, "cur_run", None)
        if run is not None:
            self.mlflow_handler.client.log_artifact(run.info.run_id, str(path), artifact_path="samples")
