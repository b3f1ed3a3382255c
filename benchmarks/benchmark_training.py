"""Benchmark: classifier and medXGAN training throughput (images per second), with and without mixed precision.

The prepared check for a lent GPU: each (model, precision) pair runs in its own process on untrained networks at the
bundle's sizes; ratios are against full precision of the same model, measured in the same run. On a CPU, mixed
precision is not measured (the trainers enable it for CUDA only).

Usage::

    python scripts/benchmark_training.py --device cuda [--size 64] [--batch-size 32] [--iterations 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks._benchmarking import networks_for_size, peak_memory_mb, reset_peak_memory, run_isolated

__all__ = ["main", "measure_classifier"]


def measure_classifier(size: int, batch_size: int, iterations: int, device: str, amp: bool) -> dict:
    """Images per second of classifier training steps (cross-entropy, AdamW; one warm-up step not timed)."""
    import torch

    network = networks_for_size(size, device)["classifier"].train()
    optimizer = torch.optim.AdamW(network.parameters(), 2e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images = torch.rand(batch_size, 1, size, size, device=device)
    labels = torch.arange(batch_size, device=device) % 2
    reset_peak_memory(device)
    for step in range(iterations + 1):
        if step == 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(network(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"images_per_s": iterations * batch_size / elapsed, "peak_memory_mb": peak_memory_mb(device)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--single", nargs=2, metavar=("MODEL", "AMP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        model, amp = args.single[0], args.single[1] == "1"
        if model == "classifier":
            result = measure_classifier(args.size, args.batch_size, args.iterations, args.device, amp)
        else:
            from benchmarks.benchmark_gan import measure

            result = measure(args.size, args.batch_size, args.iterations, args.device, True, amp)
        print(json.dumps(result))
        return 0
    precisions = (False, True) if args.device.startswith("cuda") else (False,)
    common = ["--device", args.device, "--size", str(args.size), "--batch-size", str(args.batch_size)]
    common += ["--iterations", str(args.iterations)]
    print(f"training throughput on {args.device}, {args.size} px, batch {args.batch_size}, {args.iterations} steps")
    print("| model | precision | images / s | x full precision | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for model in ("classifier", "gan"):
        base = None
        for amp in precisions:
            row = run_isolated("benchmarks.benchmark_training", [*common, "--single", model, str(int(amp))])
            base = base or row
            print(
                f"| {model} | {'mixed' if amp else 'full'} | {row['images_per_s']:.1f} | "
                f"{row['images_per_s'] / base['images_per_s']:.2f}x | {row['peak_memory_mb']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
