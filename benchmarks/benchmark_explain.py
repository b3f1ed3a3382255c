"""Benchmark: milliseconds per image and peak memory of every explanation method at several image sizes.

Each (size, method) pair runs in its own process, so a CPU peak resident set size belongs to that method alone.
Networks are untrained (timing does not depend on the weights) and built for each size like the bundle's 64-pixel
networks. Ratios are against Integrated Gradients with 50 steps at the same size, measured in the same run.

Methods: ``ig50`` (the yardstick), ``gradient``, ``gradcam``, ``occlusion``, ``latentshift``, ``medxgan`` (the
amortised explainer as the inference bundle runs it: encoder, 25 refinement steps with the counterfactual term,
50-step latent IG, 11-frame sweep, residual counterfactual refined 50 steps and image IG from it)
and ``medxgan_paper`` (the paper's recipe: 1000-step inversion from zeros, then a 101-point latent IG, paper variant).

Usage::

    python scripts/benchmark_explain.py [--sizes 64 128 256] [--methods ...] [--images 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks._benchmarking import networks_for_size, peak_memory_mb, reset_peak_memory, run_isolated

__all__ = ["METHODS", "build_explainer", "main", "measure"]

METHODS = ("ig50", "gradient", "gradcam", "occlusion", "latentshift", "medxgan", "medxgan_paper")


def build_explainer(method: str, networks: dict, paper_steps: int = 1000):
    """The explainer for ``method``, configured as the inference bundle (or, for ``medxgan_paper``, the paper)."""
    from medxgan_monai import explain

    classifier, generator, encoder = networks["classifier"], networks["generator"], networks["encoder"]
    builders = {
        "ig50": lambda: explain.IntegratedGradientsExplainer(classifier, steps=50),
        "gradient": lambda: explain.InputGradientExplainer(classifier),
        "gradcam": lambda: explain.GradCAMExplainer(classifier, "class_layers.relu"),
        "occlusion": lambda: explain.OcclusionExplainer(classifier),
        "latentshift": lambda: explain.LatentShiftExplainer(classifier, generator, encoder),
        "medxgan": lambda: explain.MedXGANExplainer(
            classifier,
            generator,
            encoder,
            inversion_steps=25,
            inversion_learning_rate=1e-2,
            counterfactual_weight=1.0,
            counterfactual_steps=50,
            ig_steps=50,
        ),
        "medxgan_paper": lambda: explain.MedXGANExplainer(
            classifier, generator, None, inversion_steps=paper_steps, ig_steps=100, ig_variant="paper"
        ),
    }
    return builders[method]()


def measure(size: int, method: str, images: int, device: str, paper_steps: int = 1000) -> dict:
    """Explain ``images`` random images one at a time (after one warm-up call); return ms per image and peak memory."""
    import torch

    explainer = build_explainer(method, networks_for_size(size, device), paper_steps)
    inputs = torch.rand(images + 1, 1, size, size, device=device)
    reset_peak_memory(device)
    explainer(inputs[:1])
    start = time.perf_counter()
    for index in range(1, images + 1):
        explainer(inputs[index : index + 1])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "size": size,
        "method": method,
        "ms_per_image": 1000 * elapsed / images,
        "peak_memory_mb": peak_memory_mb(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--images", type=int, default=4, help="images timed per method (after one warm-up)")
    parser.add_argument("--paper-images", type=int, default=1, help="images timed for medxgan_paper (it is slow)")
    parser.add_argument("--paper-steps", type=int, default=1000, help="inversion steps of medxgan_paper")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        size, method = int(args.single[0]), args.single[1]
        images = args.paper_images if method == "medxgan_paper" else args.images
        import json

        print(json.dumps(measure(size, method, images, args.device, args.paper_steps)))
        return 0
    methods = ["ig50"] + [m for m in args.methods if m != "ig50"]
    print(f"explanation cost per image on {args.device} (untrained networks, one image per call)")
    print("| size | method | ms / image | x IG-50 | peak memory (MB) | memory x IG-50 |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        rows = []
        for method in methods:
            arguments = ["--single", str(size), method, "--images", str(args.images), "--device", args.device]
            arguments += ["--paper-images", str(args.paper_images), "--paper-steps", str(args.paper_steps)]
            rows.append(run_isolated("benchmarks.benchmark_explain", arguments))
        base = rows[0]
        for row in rows:
            print(
                f"| {size} | {row['method']} | {row['ms_per_image']:.1f} | "
                f"{row['ms_per_image'] / base['ms_per_image']:.2f}x | {row['peak_memory_mb']:.0f} | "
                f"{row['peak_memory_mb'] / base['peak_memory_mb']:.2f}x |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
