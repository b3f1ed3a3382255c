"""Ablation study of medXGAN variants on a benchmark: train what is missing, evaluate each variant, one table.

A study file (``bundle/configs/ablation.json``) names GAN trainings (bundle config files plus overrides) and
variants (a training or the shipped weights, explanation overrides, methods). Each variant is one run of the
evaluation bundle (``inference.json`` + ``evaluate.json``) into ``<output_dir>/<variant>/``, tracked in MLflow like
any evaluation; the table (``ablation.md``, ``ablation.csv``) collects every variant's methods with the mean and 95%
bootstrap CI of each metric. A variant whose evaluation folder already holds ``metrics_summary.csv`` is not run
again (``--rerun`` forces it), so an interrupted study resumes.

Usage::

    python scripts/ablation.py                                 # every variant; trains missing GANs with --train
    python scripts/ablation.py --variants default paper_recipe_amortised --train
    python scripts/ablation.py --datalist data/demo_small/datalist.json --output-dir outputs/ablation_small
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medxgan_monai.bundle import config_value
from medxgan_monai.metrics import METRICS

__all__ = ["AblationStudy", "Training", "Variant", "ablation_table", "main"]

EVALUATION_CONFIGS = ["bundle/configs/inference.json", "bundle/configs/evaluate.json"]
#: the metrics of :data:`~medxgan_monai.metrics.METRICS` the table shows, in column order (then ms / image)
SHOWN_METRICS = ("pointing_game", "relevance_mass", "top_k_iou", "counterfactual_validity", "deletion_auc")
#: table columns: name in metrics_summary.csv -> heading
TABLE_COLUMNS = {**{name: METRICS[name].heading for name in SHOWN_METRICS}, "seconds": "ms / image"}


def _bundle_command(config_files: list[str], settings: dict) -> list[str]:
    """``python -m monai.bundle run`` of ``config_files`` with ``settings`` as overrides, each one data: a
    :func:`~medxgan_monai.bundle.config_value` entry written as the Python literal python-fire parses back, so no
    path, run name or datalist given to the study is read by MONAI as an expression, reference or macro."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_files)]
    for key, value in settings.items():
        command += [f"--{key}", repr(config_value(value))]
    return command


@dataclass
class Training:
    """A GAN training: bundle config files and overrides; its weights land in ``<output_dir>/models/``."""

    name: str
    config_files: list[str]
    overrides: dict = field(default_factory=dict)
    description: str = ""

    def weights(self, root: Path) -> dict[str, str]:
        models = root / "models"
        return {"generator_ckpt": str(models / "generator.pt"), "encoder_ckpt": str(models / "encoder.pt")}

    def command(self, root: Path) -> list[str]:
        return _bundle_command(self.config_files, {"output_dir": str(root), **self.overrides})


@dataclass
class Variant:
    """One row group of the table: weights (a training's or the bundle's), explanation overrides and methods."""

    name: str
    methods: list[str]
    description: str = ""
    training: str | None = None
    config_files: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    max_items: int | None = None


class AblationStudy:
    """Run a study file's variants with the evaluation bundle and collect their summaries.

    Example::

        study = AblationStudy.from_file("bundle/configs/ablation.json", output_dir="outputs/ablation")
        study.run(train=True)
        print(ablation_table(study.collect()))
    """

    def __init__(
        self,
        trainings: dict[str, Training],
        variants: list[Variant],
        output_dir: str | Path,
        datalist: str | None = None,
        section: str = "test",
        extra_overrides: dict | None = None,
    ) -> None:
        unknown = [v.training for v in variants if v.training is not None and v.training not in trainings]
        if unknown:
            raise ValueError(f"variants name unknown trainings {unknown}; known: {sorted(trainings)}")
        self.trainings = trainings
        self.variants = variants
        self.output_dir = Path(output_dir)
        self.datalist = datalist
        self.section = section
        self.extra_overrides = extra_overrides or {}

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> AblationStudy:
        spec = json.loads(Path(path).read_text())
        trainings = {name: Training(name=name, **entry) for name, entry in spec.get("trainings", {}).items()}
        variants = [Variant(**entry) for entry in spec["variants"]]
        kwargs.setdefault("datalist", spec.get("datalist"))
        return cls(trainings, variants, **kwargs)

    def select(self, names: list[str] | None) -> list[Variant]:
        if not names:
            return self.variants
        known = {v.name: v for v in self.variants}
        missing = [name for name in names if name not in known]
        if missing:
            raise ValueError(f"unknown variants {missing}; known: {list(known)}")
        return [known[name] for name in names]

    def training_root(self, training: str) -> Path:
        return self.output_dir / "trainings" / training

    def evaluation_dir(self, variant: Variant) -> Path:
        return self.output_dir / variant.name

    def evaluation_command(self, variant: Variant) -> list[str]:
        settings = {
            "run_name": f"ablation_{variant.name}",
            "output_dir": str(self.evaluation_dir(variant)),
            "tracking_uri": "sqlite:///" + str((self.output_dir / "mlruns.db").resolve()),
            "section": self.section,
            "methods": variant.methods,
            "overwrite": True,
        }
        if self.datalist:
            settings["datalist"] = self.datalist
        # study-wide settings first: what a variant itself names (items, weights, overrides) wins
        settings.update(self.extra_overrides)
        if variant.max_items is not None:
            settings["max_items"] = variant.max_items
        if variant.training is not None:
            settings.update(self.trainings[variant.training].weights(self.training_root(variant.training)))
        settings.update(variant.overrides)
        return _bundle_command(EVALUATION_CONFIGS + variant.config_files, settings)

    def run(self, names: list[str] | None = None, train: bool = False, rerun: bool = False) -> list[str]:
        """Evaluate the selected variants (training missing GANs when ``train``); returns the skipped variants."""
        skipped = []
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for variant in self.select(names):
            if (self.evaluation_dir(variant) / "metrics_summary.csv").exists() and not rerun:
                print(f"[ablation] {variant.name}: already evaluated", flush=True)
                continue
            if variant.training is not None:
                training = self.trainings[variant.training]
                root = self.training_root(training.name)
                if not all(Path(p).exists() for p in training.weights(root).values()):
                    if not train:
                        print(f"[ablation] {variant.name}: skipped, no weights in {root} (use --train)", flush=True)
                        skipped.append(variant.name)
                        continue
                    print(f"[ablation] training {training.name} into {root}", flush=True)
                    subprocess.run(training.command(root), check=True)
            print(f"[ablation] evaluating {variant.name}", flush=True)
            subprocess.run(self.evaluation_command(variant), check=True)
        return skipped

    def collect(self, names: list[str] | None = None) -> list[dict]:
        """One row per (variant, method) with each table metric's mean, CI and n, from metrics_summary.csv."""
        rows = []
        for variant in self.select(names):
            summary = self.evaluation_dir(variant) / "metrics_summary.csv"
            if not summary.exists():
                continue
            with open(summary, newline="") as handle:
                entries = list(csv.DictReader(handle))
            for method in variant.methods:
                row = {"variant": variant.name, "method": method, "description": variant.description}
                for entry in entries:
                    if entry["method"] == method and entry["metric"] in TABLE_COLUMNS:
                        for key in ("mean", "ci_low", "ci_high", "n"):
                            row[f"{entry['metric']}_{key}"] = entry[key]
                rows.append(row)
        return rows


def _cell(row: dict, metric: str) -> str:
    mean = row.get(f"{metric}_mean", "")
    if mean in ("", "nan"):
        return "-"
    if metric == "seconds":
        return f"{1000 * float(mean):.0f}"
    low, high = row.get(f"{metric}_ci_low", ""), row.get(f"{metric}_ci_high", "")
    interval = f" [{float(low):.3f}, {float(high):.3f}]" if low not in ("", "nan") else ""
    return f"{float(mean):.3f}{interval}"


def ablation_table(rows: list[dict]) -> str:
    """Markdown table of :meth:`AblationStudy.collect` rows (mean [95% CI]; n = scored images)."""
    header = ["variant", "map", "n", *TABLE_COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        n = row.get("pointing_game_n", "-")
        cells = [row["variant"], row["method"], n, *(_cell(row, metric) for metric in TABLE_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], output_dir: Path) -> None:
    (output_dir / "ablation.md").write_text(ablation_table(rows))
    fields = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("variant", "method"), k))
    with open(output_dir / "ablation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="bundle/configs/ablation.json", help="study file")
    parser.add_argument("--variants", nargs="*", help="variant names (default: all)")
    parser.add_argument("--output-dir", default="outputs/ablation")
    parser.add_argument("--datalist", help="datalist to evaluate on (default: the study file's)")
    parser.add_argument("--section", default="test")
    parser.add_argument("--train", action="store_true", help="train GANs whose weights are missing")
    parser.add_argument("--rerun", action="store_true", help="evaluate variants again even if evaluated")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=JSON", help="overrides for every evaluation, e.g. max_items=32"
    )
    args = parser.parse_args(argv)
    extra = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    study = AblationStudy.from_file(
        args.study,
        output_dir=args.output_dir,
        section=args.section,
        extra_overrides=extra,
        **({"datalist": args.datalist} if args.datalist else {}),
    )
    skipped = study.run(args.variants, train=args.train, rerun=args.rerun)
    rows = study.collect(args.variants)
    write_table(rows, study.output_dir)
    print(ablation_table(rows))
    if skipped:
        print(f"[ablation] not evaluated (no weights): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
