"""Benchmark: medXGAN training iterations per second and peak memory at several image sizes.

Each size runs in its own process so that peak memory (CPU: maximum resident set size; GPU: peak allocated) belongs
to that size alone. Ratios are relative to the first size, measured in the same run.

Usage::

    python scripts/benchmark_gan.py [--sizes 64 128 256] [--batch-size 16] [--iterations 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

__all__ = ["main", "measure"]


def _stages(size: int) -> int:
    return int(math.log2(size // 4))


def measure(size: int, batch_size: int, iterations: int, device: str, encoder: bool) -> dict:
    """Time ``iterations`` trainer iterations (after one warm-up) at ``size`` pixels; return rate and peak memory."""
    import torch
    from monai.networks.nets import DenseNet

    from medxgan_monai.engines import MedXGANTrainer
    from medxgan_monai.networks import MedXGANDiscriminator, MedXGANEncoder, MedXGANGenerator

    torch.manual_seed(0)
    stages = _stages(size)
    g_channels = [max(128 // 2**i, 8) for i in range(stages)]
    d_channels = [min(16 * 2**i, 256) for i in range(stages)]
    generator = MedXGANGenerator(image_size=size, channels=g_channels).to(device)
    discriminator = MedXGANDiscriminator(image_size=size, channels=d_channels).to(device)
    e_network = MedXGANEncoder(image_size=size, channels=d_channels).to(device) if encoder else None
    classifier = DenseNet(2, 1, 2, init_features=32, growth_rate=16, block_config=(4, 8, 8)).to(device)
    batch = {"image": torch.rand(batch_size, 1, size, size), "label": torch.arange(batch_size) % 2}
    data = [batch] * (iterations + 1)
    trainer = MedXGANTrainer(
        device,
        1,
        data,
        generator,
        torch.optim.Adam(generator.parameters(), 2e-4),
        discriminator,
        torch.optim.Adam(discriminator.parameters(), 2e-4),
        classifier,
        e_network=e_network,
        e_optimizer=torch.optim.Adam(e_network.parameters(), 2e-4) if encoder else None,
        amp=device.startswith("cuda"),
    )
    times: list[float] = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: times.append(time.perf_counter()))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.perf_counter() - times[1]  # skip the warm-up iteration
    return {
        "size": size,
        "batch_size": batch_size,
        "iterations_per_s": iterations / elapsed,
        "images_per_s": iterations * batch_size / elapsed,
        "peak_memory_mb": peak_mb,
        "generator_parameters_m": sum(p.numel() for p in generator.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-encoder", action="store_true", help="time G and D steps only")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = parser.parse_args(argv)
    if args.single:
        result = measure(args.single, args.batch_size, args.iterations, args.device, not args.no_encoder)
        print(json.dumps(result))
        return 0
    rows = []
    for size in args.sizes:
        command = [sys.executable, "-m", "medxgan_monai.cli.benchmark_gan", "--single", str(size)]
        command += ["--batch-size", str(args.batch_size), "--iterations", str(args.iterations), "--device", args.device]
        command += ["--no-encoder"] if args.no_encoder else []
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(
        f"medXGAN training step on {args.device}, batch {args.batch_size}, encoder {'off' if args.no_encoder else 'on'}"
    )
    print("| size | G params (M) | iterations/s | images/s | peak memory (MB) | time vs first | memory vs first |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']} | {row['generator_parameters_m']:.2f} | {row['iterations_per_s']:.3f} | "
            f"{row['images_per_s']:.1f} | {row['peak_memory_mb']:.0f} | "
            f"{base['iterations_per_s'] / row['iterations_per_s']:.2f}x | "
            f"{row['peak_memory_mb'] / base['peak_memory_mb']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
