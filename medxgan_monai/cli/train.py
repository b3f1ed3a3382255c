"""Command line of ``medxgan-train``: a classifier (or yours) and a medXGAN explainer for it, trained on your datalist
phase by phase (the recipe of the shipped weights, in images seen), then evaluated. Runs
``bundle/configs/train_explainer.json``.

Example::

    medxgan-train data/mine/datalist.json --output-dir outputs/mine [--max-minutes 30] [--classifier-ckpt model.pt]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medxgan_monai.bundle import SPATIAL_OVERLAYS

__all__ = ["main"]


def _setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE``, the value read as JSON when it parses (numbers, lists, true/false), else as a string."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medxgan-train", description=__doc__.splitlines()[0])
    parser.add_argument("datalist", help="datalist JSON with training, validation (and test) sections")
    parser.add_argument("--output-dir", required=True, help="one folder per phase, plan.json, evaluation/, report.md")
    parser.add_argument("--classifier-ckpt", help="explain this classifier (DenseNet weights): no classifier phase")
    parser.add_argument("--register", metavar="NAME", help="register the explainer in the MLflow model registry")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--no-evaluation", action="store_true", help="train only")
    parser.add_argument(
        "--validity-target",
        type=float,
        default=0.95,
        help="a GAN phase stops training G and D once its counterfactuals are valid both ways at this rate (default "
        "0.95); 0 trains every planned epoch",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="a time budget for the training: the phases are measured on this machine for a minute or two, then all "
        "shortened by one factor to fit (the evaluation comes after it); default: the recipe as written",
    )
    parser.add_argument(
        "--spatial-dims",
        type=int,
        choices=sorted(SPATIAL_OVERLAYS),
        default=2,
        help="2: a 2D classifier and explainer of images (default); 3: of whole volumes (the bundle's configs/3d.json: "
        "32x32x32 voxels, 3D networks)",
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every phase, e.g. --set image_size=[128,128]",
    )
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped bundle)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when every phase and the evaluation finished, 2 on misuse or bad input."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from medxgan_monai.bundle import DEFAULT_BUNDLE
    from medxgan_monai.data import DatalistError
    from medxgan_monai.training import BudgetError, PhaseError, run_bundle_workflow

    settings = dict(args.set)
    if args.device:
        settings["device"] = args.device
    values = {
        "datalist": str(Path(args.datalist).resolve()),
        "output_dir": str(Path(args.output_dir).resolve()),
        "classifier_ckpt": str(Path(args.classifier_ckpt).resolve()) if args.classifier_ckpt else None,
        "register_model_name": args.register,
        "evaluate": not args.no_evaluation,
        "validity_target": args.validity_target or None,
        "max_minutes": args.max_minutes,
        "settings": settings,
        "overlays": list(SPATIAL_OVERLAYS[args.spatial_dims]),
    }
    try:
        run_bundle_workflow(args.bundle or DEFAULT_BUNDLE, ["train_explainer.json"], "train", values)
    except (DatalistError, PhaseError, BudgetError, FileNotFoundError) as error:
        print(f"medxgan-train: error: {error}", file=sys.stderr)
        return 2
    print(f"report: {Path(args.output_dir) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
