"""The training report's curves: every phase's per-epoch losses and validation metrics on one time line."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["CURVE_PANELS", "plot_training_curves", "read_history"]

#: panel title -> the metric names it shows (a name ending in ``*`` is a prefix); a metric no panel names goes to
#: "other validation metrics" (``val_*``) or "training losses"
CURVE_PANELS: dict[str, tuple[str, ...]] = {
    "counterfactual validity": ("val_cf_validity*",),
    "classifier (validation)": ("val_auc", "val_acc*", "val_sensitivity", "val_specificity"),
    "inversion PSNR (dB)": ("val_inversion_psnr",),
}


def read_history(path: str | os.PathLike) -> list[dict]:
    """The epochs of a ``history.jsonl`` (one JSON object per line, as :class:`~medxgan_monai.handlers.PlanProgress`
    writes them); a resumed phase's repeated epochs keep their last line."""
    path = Path(path)
    if not path.is_file():
        return []
    epochs: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            epochs[int(entry["epoch"])] = entry
    return [epochs[epoch] for epoch in sorted(epochs)]


def _panel(name: str) -> str:
    for title, patterns in CURVE_PANELS.items():
        if any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns):
            return title
    return "other validation metrics" if name.startswith("val_") else "training losses"


def plot_training_curves(histories: Mapping[str, Sequence[dict]], path: str | os.PathLike) -> Path | None:
    """Plot ``histories`` (phase name -> its epochs, in plan order) to ``path`` (PNG): one panel per kind of metric,
    the phases one after the other along the x axis (epochs of the whole plan), their boundaries marked. Returns the
    path, or ``None`` when there is nothing to plot.

    Example::

        plot_training_curves({"gan": read_history("outputs/mine/gan/history.jsonl")}, "outputs/mine/curves.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    # panel -> metric -> (x, y) over the whole plan; a NaN between phases breaks the line at each boundary
    series: dict[str, dict[str, tuple[list, list]]] = {}
    boundaries, offset = [], 0
    for phase, epochs in histories.items():
        for entry in epochs:
            for name, value in entry.items():
                if name in ("epoch", "max_epochs", "seconds"):
                    continue
                xs, ys = series.setdefault(_panel(name), {}).setdefault(name, ([], []))
                if xs and xs[-1] <= offset:
                    xs.append(offset + 0.5)
                    ys.append(math.nan)
                xs.append(offset + entry["epoch"])
                ys.append(value)
        if epochs:
            offset += max(entry["epoch"] for entry in epochs)
            boundaries.append((offset, phase))
    if not series:
        return None
    titles = [title for title in (*CURVE_PANELS, "other validation metrics", "training losses") if title in series]
    figure, axes = plt.subplots(len(titles), 1, figsize=(9, 2.6 * len(titles)), sharex=True, squeeze=False)
    for axis, title in zip(axes[:, 0], titles, strict=True):
        for name, (xs, ys) in sorted(series[title].items()):
            axis.plot(xs, ys, marker="." if len(xs) < 40 else None, label=name, linewidth=1)
        for boundary, _ in boundaries[:-1]:
            axis.axvline(boundary + 0.5, color="grey", linewidth=0.5, linestyle=":")
        axis.set_title(title, fontsize=9)
        if title == "training losses":
            axis.set_yscale("symlog", linthresh=1e-2)
        axis.legend(fontsize=6, ncol=3, loc="best")
    axes[-1, 0].set_xlabel("epoch of the plan (phases: " + ", ".join(name for _, name in boundaries) + ")")
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial.png")
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    os.replace(temporary, path)
    return path
