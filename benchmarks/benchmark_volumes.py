"""Benchmark: seconds per volume of every explanation method, a volume explained slice by slice with the 2D model.

A synthetic 3D NIfTI volume (64 x 64 slices of a disc phantom, a dark lesion through a third of the slices) of each
requested slice count is explained by the inference bundle with the shipped weights (``run_inference``: loading,
screening, every slice through the classifier and the method, the maps stacked and written back into the volume's
geometry), one method per run. ``--slices all`` explains every slice; ``positive`` (the bundle's default) only the
slices the classifier calls positive, so its cost follows the volume. Ratios are against Integrated Gradients with the
bundle's 50 steps (``ig``) on the same volume in the same run. Each run's seconds include the bundle's start (config,
weights; a warm-up run first takes the process's one-off costs): the ``16`` column shows that fixed part best.

Usage::

    python scripts/benchmark_volumes.py [--slice-counts 16 64 128] [--methods ig medxgan_ig ...] [--slices all]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "phantom_volume"]

YARDSTICK = "ig"


def phantom_volume(path: Path, slices: int, size: int = 64, seed: int = 0) -> Path:
    """A (size, size, slices) NIfTI volume: a bright disc with noise, a dark lesion through the middle third."""
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"))
    disc = np.sqrt((grid**2).sum(0)) < 0.8
    lesion = np.sqrt(((grid - np.array([0.3, -0.2])[:, None, None]) ** 2).sum(0)) < 0.15
    volume = np.empty((size, size, slices), np.float32)
    for k in range(slices):
        inside = slices // 3 <= k < 2 * slices // 3
        volume[:, :, k] = 1000 * disc - 400 * (lesion & disc) * inside + 50 * rng.random((size, size))
    affine = np.diag([220 / size, 220 / size, 4.0, 1.0])
    nib.save(nib.Nifti1Image(volume.clip(0), affine), path)
    return path


def measure(volume: Path, method: str, slices: str, workdir: Path, device) -> float:
    """Wall seconds of one bundle run explaining ``volume`` with ``method``."""
    from medxgan_monai.bundle import run_inference

    start = time.perf_counter()
    report = run_inference(
        {
            "input": [str(volume)],
            "output_dir": str(workdir / f"{volume.stem}_{method}"),
            "methods": [method],
            "slices": slices,
            "device": device,
            "tracking_uri": None,
        }
    )
    if report.problems:
        raise RuntimeError(f"{volume}: {report.problems[0].problem}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from medxgan_monai.explain import method_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice-counts", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--methods", nargs="+", default=[YARDSTICK, *(m for m in method_names() if m != YARDSTICK)])
    parser.add_argument("--slices", default="all", help="which slices to explain: all, positive or N-M")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    methods = [YARDSTICK, *(m for m in args.methods if m != YARDSTICK)]
    seconds: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="medxgan_volume_bench_") as scratch:
        workdir = Path(scratch)
        # the process's first bundle run also pays for imports and first calls: not part of any measured volume
        measure(phantom_volume(workdir / "warm_up.nii.gz", 2), YARDSTICK, "all", workdir, torch.device(args.device))
        for count in args.slice_counts:
            volume = phantom_volume(workdir / f"volume_{count}.nii.gz", count)
            for method in methods:
                seconds[method, count] = measure(volume, method, args.slices, workdir, torch.device(args.device))
                print(f"{count} slices, {method}: {seconds[method, count]:.1f} s", file=sys.stderr, flush=True)
    print(
        f"Seconds per volume (64 x 64 slices, --slices {args.slices}, device {args.device}, "
        f"{torch.get_num_threads()} PyTorch thread(s)); ratio to {YARDSTICK} (IG-50) on the same volume"
    )
    header = " | ".join(f"{count} slices s | vs IG-50" for count in args.slice_counts)
    print(f"| method | {header} |")
    print("|---|" + "---|---|" * len(args.slice_counts))
    for method in methods:
        cells = " | ".join(
            f"{seconds[method, count]:.1f} | {seconds[method, count] / seconds[YARDSTICK, count]:.2f}x"
            for count in args.slice_counts
        )
        print(f"| `{method}` | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
