"""Benchmark: medXGAN training iterations per second and peak memory at several image sizes.

Each size runs in its own process so that peak memory (CPU: maximum resident set size; GPU: peak allocated) belongs
to that size alone. Ratios are relative to the first size, measured in the same run.

Usage::

    python scripts/benchmark_gan.py [--sizes 64 128 256] [--batch-size 16] [--iterations 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks._benchmarking import networks_for_size, peak_memory_mb, reset_peak_memory, run_isolated

__all__ = ["main", "measure"]


def measure(size: int, batch_size: int, iterations: int, device: str, encoder: bool, amp: bool | None = None) -> dict:
    """Time ``iterations`` trainer iterations (after one warm-up) at ``size`` pixels; return rate and peak memory.
    ``amp`` (mixed precision) defaults to on for CUDA devices."""
    import torch

    from medxgan_monai.engines import MedXGANTrainer

    networks = networks_for_size(size, device)
    generator, discriminator, classifier = networks["generator"], networks["discriminator"], networks["classifier"]
    e_network = networks["encoder"] if encoder else None
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
        amp=device.startswith("cuda") if amp is None else amp,
    )
    times: list[float] = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: times.append(time.perf_counter()))
    reset_peak_memory(device)
    trainer.run()
    peak_mb = peak_memory_mb(device)
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
        arguments = ["--single", str(size), "--batch-size", str(args.batch_size), "--iterations", str(args.iterations)]
        arguments += ["--device", args.device] + (["--no-encoder"] if args.no_encoder else [])
        rows.append(run_isolated("benchmarks.benchmark_gan", arguments))
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
