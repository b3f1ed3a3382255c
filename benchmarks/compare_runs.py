"""Paired comparison of one method between two evaluation runs on the same images (e.g. new defaults vs old).

Reads each run's ``metrics_per_image.csv`` (the evaluation bundle's output), pairs the images by stem, and prints,
for every metric of the metric table both runs scored, run B minus run A: mean difference with its 95% paired
bootstrap interval (:func:`~medxgan_monai.metrics.paired_bootstrap`), the number of pairs, the verdict in the
metric's better direction, and the mean seconds per image of each run.

Usage::

    python scripts/compare_runs.py outputs/evaluation/demo_benchmark_v07 outputs/evaluation/demo_benchmark_v08 \\
        [--method medxgan_ig]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

__all__ = ["main", "per_image_scores"]


def per_image_scores(run: Path, method: str) -> dict[str, dict[str, str]]:
    """The per-image rows of ``method`` in ``run``'s ``metrics_per_image.csv``, by image stem."""
    path = Path(run) / "metrics_per_image.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an evaluation run's folder (no metrics_per_image.csv)")
    with open(path, newline="") as stream:
        rows = {row["stem"]: row for row in csv.DictReader(stream) if row["method"] == method}
    if not rows:
        raise ValueError(f"{path}: no rows of method {method!r}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="evaluation run folder A (the reference)")
    parser.add_argument("run_b", type=Path, help="evaluation run folder B")
    parser.add_argument("--method", default="medxgan_ig")
    parser.add_argument("--bootstrap-samples", type=int, default=2000)
    args = parser.parse_args(argv)
    import numpy as np

    from medxgan_monai.metrics import METRICS, paired_bootstrap
    from medxgan_monai.metrics.statistics import REFERENCE_BETTER, REFERENCE_WORSE, paired_verdict

    verdicts = {REFERENCE_BETTER: "B better", REFERENCE_WORSE: "B worse"}

    a, b = per_image_scores(args.run_a, args.method), per_image_scores(args.run_b, args.method)
    stems = sorted(set(a) & set(b))
    print(f"{args.method}: {args.run_b.name} minus {args.run_a.name} on {len(stems)} images of both runs")
    print("| metric | A | B | B - A [95% paired CI] | n | verdict |")
    print("|---|---|---|---|---|---|")
    for metric in METRICS.values():
        if metric.name not in a[stems[0]] or metric.name not in b[stems[0]]:
            continue
        scores_a = np.asarray([float(a[s][metric.name] or "nan") for s in stems])
        scores_b = np.asarray([float(b[s][metric.name] or "nan") for s in stems])
        mean, low, high, count = paired_bootstrap(scores_b, scores_a, args.bootstrap_samples)
        if count == 0:
            continue
        verdict = paired_verdict(low, high, metric.higher_is_better)
        verdict = verdicts.get(verdict, verdict)
        print(
            f"| {metric.title} | {np.nanmean(scores_a):.3f} | {np.nanmean(scores_b):.3f} | "
            f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] | {count} | {verdict} |"
        )
    seconds_a = np.mean([float(a[s]["seconds"]) for s in stems])
    seconds_b = np.mean([float(b[s]["seconds"]) for s in stems])
    print(f"| seconds per image | {seconds_a:.3f} | {seconds_b:.3f} | {seconds_b / seconds_a:.2f}x | {len(stems)} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
