"""Command line: ``medxgan-explain INPUT... --output DIR``, the bundle's inference pipeline without writing configs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medxgan_monai.bundle import DEFAULT_BUNDLE, SPATIAL_OVERLAYS

__all__ = ["add_methods_argument", "add_weights_arguments", "main", "weights_overrides"]

#: the weights a user may give instead of the bundle's: setting -> what it is
WEIGHTS = {
    "classifier_ckpt": "classifier weights (default: the bundle's models/model.pt)",
    "generator_ckpt": "generator weights (default: the bundle's models/generator.pt)",
    "encoder_ckpt": "encoder weights (default: the bundle's models/encoder.pt)",
    "counterfactual_encoder_ckpt": "counterfactual encoder weights, trained for this generator and encoder by "
    "bundle/configs/train_counterfactual_encoder.json (default: the bundle's models/counterfactual_encoder.pt "
    "with the bundle's own generator and encoder, else none: the default map then refines 50 steps)",
}


def add_methods_argument(parser: argparse.ArgumentParser, default: list[str] | None, help_default: str) -> None:
    """``--methods``, its choices the registry's methods (:data:`medxgan_monai.explain.METHODS`)."""
    from medxgan_monai.explain import method_names

    parser.add_argument(
        "--methods", nargs="+", choices=method_names(), default=default, help=f"explanation methods ({help_default})"
    )


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--classifier-ckpt``, ``--generator-ckpt``, ``--encoder-ckpt``, ``--counterfactual-encoder-ckpt``."""
    for setting, description in WEIGHTS.items():
        parser.add_argument("--" + setting.replace("_", "-"), help=description)


def weights_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The weights given on the command line, as bundle overrides (absolute paths)."""
    return {setting: str(Path(getattr(args, setting)).resolve()) for setting in WEIGHTS if getattr(args, setting)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medxgan-explain",
        description="Explain a binary classifier's decision on scans (NIfTI, DICOM, PNG): saliency maps and "
        "counterfactuals written next to the source geometry. Runs bundle/configs/inference.json.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="image files, 3D NIfTI volumes, enhanced multi-frame DICOM volumes, folders (searched recursively; the "
        "DICOM instances of one series in a folder are one volume) or datalist JSON files",
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--spatial-dims",
        type=int,
        choices=sorted(SPATIAL_OVERLAYS),
        default=2,
        help="2: the 2D explainer (volumes explained slice by slice; default); 3: the 3D explainer of whole volumes "
        "(the bundle's configs/3d.json and its models/3d weights)",
    )
    add_methods_argument(parser, None, "default: the bundle's `methods` setting, the default map medxgan_ig first")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--section", default="test", help="datalist section to explain (default: test)")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (default: the shipped bundle)")
    add_weights_arguments(parser)
    volumes = parser.add_argument_group(
        "volumes (3D NIfTI, DICOM series, enhanced multi-frame DICOM), explained slice by slice"
    )
    volumes.add_argument(
        "--slices",
        default=None,
        help="which slices to explain: positive (those the classifier calls positive; the bundle's default), all, "
        "or N-M (0-based, inclusive); the others get empty maps",
    )
    volumes.add_argument(
        "--slice-axis",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="the axis a NIfTI volume is cut along (default: the header's slice_dim, else the last axis)",
    )
    volumes.add_argument(
        "--no-series",
        action="store_true",
        help="explain each DICOM instance in a folder as a 2D image instead of grouping a series into a volume",
    )
    volumes.add_argument(
        "--volume-overlay",
        action="store_true",
        help="also write a DICOM volume's overlay as a series of Secondary Captures, one per slice (default: the "
        "multi-frame Parametric Map and Segmentation only)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every input and replace existing files (default: skip inputs already complete in --output)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the inference bundle; exit status 0 when every input was explained, 1 when some failed, 2 on misuse."""
    parser = _parser()
    args = parser.parse_args(argv)
    import torch

    from medxgan_monai.bundle import run_inference
    from medxgan_monai.handlers.explanation import parse_slice_range

    if args.slices is not None:
        try:
            parse_slice_range(args.slices)
        except ValueError as error:
            parser.error(str(error))

    overrides = {
        "input": [str(Path(p)) for p in args.inputs],
        "section": args.section,
        "output_dir": str(Path(args.output)),
        "overwrite": args.overwrite,
    }
    if args.methods:
        overrides["methods"] = list(args.methods)
    if args.device:
        overrides["device"] = torch.device(args.device)
    if args.slices is not None:
        overrides["slices"] = args.slices
    if args.slice_axis is not None:
        overrides["slice_axis"] = args.slice_axis
    if args.no_series:
        overrides["series"] = False
    if args.volume_overlay:
        overrides["dicom_volume_overlay"] = True
    overrides.update(weights_overrides(args))
    try:
        report = run_inference(overrides, args.bundle, overlays=SPATIAL_OVERLAYS[args.spatial_dims])
    except (FileNotFoundError, ValueError) as error:
        print(f"medxgan-explain: error: {error}", file=sys.stderr)
        return 2
    if report.problems:
        logging.getLogger("medxgan-explain").error(
            "%d input(s) could not be explained; see %s", len(report.problems), report.output_dir / "errors.csv"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
