"""Benchmark: milliseconds per image and peak memory of every explanation method at several image sizes.

Each (size, method) pair runs in its own process, so a CPU peak resident set size belongs to that method alone.
Networks are untrained (timing does not depend on the weights) and built for each size like the bundle's 64-pixel
networks. Ratios are against Integrated Gradients with the bundle's 50 steps (``ig``) at the same size, measured in
the same run.

Methods: every registered method (:data:`medxgan_monai.explain.METHODS`) with the inference bundle's settings
(``inference.json``: each medXGAN method includes the shared inversion, the encoder's codes and ``inversion_steps``
Adam steps, as if it ran alone; the default map starts its ``counterfactual_steps`` refinement from an untrained
counterfactual encoder's codes, which cost what trained ones cost, and is timed for ``counterfactual_steps`` steps:
whether an untrained classifier calls a counterfactual valid means nothing, so the steps an image not yet valid would
add up to ``counterfactual_max_steps`` are not timed here, only in the evaluation bundle's seconds per image on real
images), and ``medxgan_paper`` (the paper's recipe: 1000-step inversion from zeros, then a 101-point latent IG, paper
variant). ``--set`` overrides settings of every method but the IG-50 yardstick, so one
command measures what a setting costs (e.g. 0.7's ``--set inversion_steps=25 medxgan_ig_steps=50
counterfactual_steps=50``, 0.8's ``--set counterfactual_steps=50``).

Usage::

    python scripts/benchmark_explain.py [--sizes 64 128 256] [--batch-sizes 1 8] [--methods ...] [--images 4]
        [--set inversion_steps=25 medxgan_ig_steps=50] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks._benchmarking import networks_for_size, peak_memory_mb, reset_peak_memory, run_isolated

__all__ = ["PAPER", "YARDSTICK", "benchmark_methods", "build_explainer", "main", "measure", "parse_settings"]

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
YARDSTICK = "ig"
PAPER = "medxgan_paper"


def benchmark_methods() -> list[str]:
    """The registered methods, the yardstick first, then the paper's recipe."""
    from medxgan_monai.explain import method_names

    return [YARDSTICK, *(m for m in method_names() if m != YARDSTICK), PAPER]


def parse_settings(assignments: list[str]) -> dict:
    """``["inversion_steps=25", ...]`` as settings (values read as JSON: numbers, booleans, lists; else strings)."""
    settings = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator or not name:
            raise SystemExit(f"--set takes SETTING=VALUE, not {assignment!r}")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    return settings


def bundle_settings() -> dict:
    """The inference bundle's explanation settings (``explainers#settings`` of ``inference.json``)."""
    from medxgan_monai.bundle import inference_config

    return inference_config(BUNDLE).get_parsed_content("explainers#settings")


def build_explainer(method: str, networks: dict, paper_steps: int = 1000, overrides: dict | None = None):
    """The :class:`~medxgan_monai.explain.Explainers` of ``method`` with the inference bundle's settings and
    ``overrides`` of them (or, for ``medxgan_paper``, the paper's latent-path IG from a ``paper_steps``-step inversion
    of zero codes)."""
    from medxgan_monai.explain import Explainers

    classifier, generator, encoder = networks["classifier"], networks["generator"], networks["encoder"]
    if method == PAPER:
        settings = {"inversion_steps": paper_steps, "inversion_learning_rate": 1e-3, "counterfactual_weight": 0.0}
        settings |= {"latent_ig_steps": 100, "latent_ig_variant": "paper"}
        return Explainers(["medxgan_lig"], classifier, generator, None, settings)
    settings = bundle_settings() | dict(overrides or {})
    if "counterfactual_max_steps" not in (overrides or {}):  # see the module docstring
        settings["counterfactual_max_steps"] = settings["counterfactual_steps"]
    return Explainers(
        [method], classifier, generator, encoder, settings, counterfactual_encoder=networks["counterfactual_encoder"]
    )


def measure(
    size: int,
    method: str,
    images: int,
    device: str,
    paper_steps: int = 1000,
    batch_size: int = 1,
    overrides: dict | None = None,
) -> dict:
    """Explain ``images`` random images in calls of ``batch_size`` images (after one warm-up call of the same size);
    return ms per image, images per second and peak memory."""
    import torch

    explainers = build_explainer(method, networks_for_size(size, device), paper_steps, overrides)
    calls = max(1, -(-images // batch_size))
    inputs = torch.rand(calls + 1, batch_size, 1, size, size, device=device)
    reset_peak_memory(device)
    with torch.no_grad():  # as in the evaluator
        explainers.explain(inputs[0])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for call in range(1, calls + 1):
            explainers.explain(inputs[call])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    timed = calls * batch_size
    return {
        "size": size,
        "method": method,
        "batch_size": batch_size,
        "ms_per_image": 1000 * elapsed / timed,
        "images_per_second": timed / elapsed,
        "peak_memory_mb": peak_memory_mb(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--methods", nargs="+", choices=benchmark_methods(), default=benchmark_methods())
    parser.add_argument("--images", type=int, default=4, help="images timed per method (after one warm-up call)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1], help="images per explain call (each measured on its own)"
    )
    parser.add_argument("--paper-images", type=int, default=1, help="images timed for medxgan_paper (it is slow)")
    parser.add_argument("--paper-steps", type=int, default=1000, help="inversion steps of medxgan_paper")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="SETTING=VALUE",
        help="override explanation settings of every method but the IG-50 yardstick (e.g. inversion_steps=25)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overrides = parse_settings(args.set)
    if args.single:
        size, method = int(args.single[0]), args.single[1]
        images = args.paper_images if method == PAPER else args.images
        chosen = {} if method == YARDSTICK else overrides
        print(json.dumps(measure(size, method, images, args.device, args.paper_steps, args.batch_sizes[0], chosen)))
        return 0
    methods = [YARDSTICK] + [m for m in args.methods if m != YARDSTICK]
    print(f"explanation cost per image on {args.device} (untrained networks; x IG-50: at the same size and batch)")
    if overrides:
        print(f"settings overridden for every method but {YARDSTICK}: {overrides}")
    print("| size | batch | method | ms / image | images / s | x IG-50 | peak memory (MB) | memory x IG-50 |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for batch_size in args.batch_sizes:
            rows = []
            for method in methods:
                arguments = ["--single", str(size), method, "--images", str(args.images), "--device", args.device]
                arguments += ["--paper-images", str(args.paper_images), "--paper-steps", str(args.paper_steps)]
                arguments += ["--batch-sizes", str(1 if method == PAPER else batch_size)]
                arguments += ["--set", *args.set] if args.set else []
                rows.append(run_isolated("benchmarks.benchmark_explain", arguments))
            base = rows[0]
            for row in rows:
                print(
                    f"| {size} | {row['batch_size']} | {row['method']} | {row['ms_per_image']:.1f} | "
                    f"{row['images_per_second']:.1f} | {row['ms_per_image'] / base['ms_per_image']:.2f}x | "
                    f"{row['peak_memory_mb']:.0f} | {row['peak_memory_mb'] / base['peak_memory_mb']:.2f}x |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
