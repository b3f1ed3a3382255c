"""What the benchmark scripts share: networks scaled to an image size, peak memory, one process per measurement."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

__all__ = ["REPOSITORY_ROOT", "networks_for_size", "peak_memory_mb", "reset_peak_memory", "run_isolated"]

#: the folder holding ``benchmarks/``: not installed with the package, so a child process is told where it is
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def networks_for_size(size: int, device: str) -> dict:
    """Untrained G, D, E, a counterfactual encoder and the bundle's classifier architecture for ``size`` x ``size``
    images (seed 0).

    Channel widths follow the bundle's 64-pixel configuration and add one stage per doubling of the size.
    """
    import torch
    from monai.networks.nets import DenseNet

    from medxgan_monai.networks import MedXGANDiscriminator, MedXGANEncoder, MedXGANGenerator

    torch.manual_seed(0)
    stages = int(math.log2(size // 4))
    g_channels = [max(128 // 2**i, 8) for i in range(stages)]
    d_channels = [min(16 * 2**i, 256) for i in range(stages)]
    e_channels = [min(32 * 2**i, 256) for i in range(stages)]
    return {
        "generator": MedXGANGenerator(image_size=size, channels=g_channels).to(device),
        "discriminator": MedXGANDiscriminator(image_size=size, channels=d_channels).to(device),
        "encoder": MedXGANEncoder(image_size=size, channels=e_channels).to(device),
        "classifier": DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(4, 8, 8)).to(device),
        # the default map's amortised refinement starts from a second encoder's codes
        "counterfactual_encoder": MedXGANEncoder(image_size=size, channels=e_channels).to(device),
    }


def reset_peak_memory(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's maximum resident set size."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(module: str, arguments: list[str]) -> dict:
    """Run ``python -m module arguments`` and parse the JSON on its last stdout line (one measurement per process,
    so that a CPU peak resident set size belongs to that measurement alone).

    The child finds ``benchmarks`` through ``PYTHONPATH`` (the repository root first), whatever the current directory.
    """
    search_path = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": search_path}
    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments], capture_output=True, text=True, env=environment
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(arguments)} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
