"""Paired comparison of one method between two evaluation runs on the same images (e.g. new defaults vs old).

Reads each run's ``metrics_per_image.csv`` (the evaluation bundle's output), pairs the images by stem, and prints,
for every metric of the metric table both runs scored, each run's mean and run B minus run A: the mean difference
with its 95% paired bootstrap interval, the number of pairs and the verdict in the metric's better direction (the
evaluation's own :func:`~medxgan_monai.metrics.paired_comparisons`, run B as the reference); then the mean seconds
per image of each run.

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

    from medxgan_monai.metrics import METRICS, paired_comparisons
    from medxgan_monai.metrics.statistics import REFERENCE_BETTER, REFERENCE_WORSE

    verdicts = {REFERENCE_BETTER: "B better", REFERENCE_WORSE: "B worse"}
    a, b = per_image_scores(args.run_a, args.method), per_image_scores(args.run_b, args.method)
    stems = sorted(set(a) & set(b))
    metrics = {name: metric for name, metric in METRICS.items() if name in a[stems[0]] and name in b[stems[0]]}
    # the two runs as two "methods" of one table, B the reference: the evaluation's own paired comparison
    rows = [
        {"stem": stem, "method": label, **{name: float(run[stem][name] or "nan") for name in metrics}}
        for label, run in (("B", b), ("A", a))
        for stem in stems
    ]
    print(f"{args.method}: {args.run_b.name} minus {args.run_a.name} on {len(stems)} images of both runs")
    print("| metric | A | B | B - A [95% paired CI] | n | verdict |")
    print("|---|---|---|---|---|---|")
    for comparison in paired_comparisons(rows, metrics, "B", args.bootstrap_samples):
        name = comparison["metric"]
        mean_a, mean_b = (np.nanmean([row[name] for row in rows if row["method"] == label]) for label in "AB")
        print(
            f"| {metrics[name].title} | {mean_a:.3f} | {mean_b:.3f} | {comparison['mean_difference']:+.3f} "
            f"[{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}] | {comparison['n']} | "
            f"{verdicts.get(comparison['verdict'], comparison['verdict'])} |"
        )
    seconds_a = np.mean([float(a[s]["seconds"]) for s in stems])
    seconds_b = np.mean([float(b[s]["seconds"]) for s in stems])
    print(f"| seconds per image | {seconds_a:.3f} | {seconds_b:.3f} | {seconds_b / seconds_a:.2f}x | {len(stems)} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
