"""Command line: ``medxgan-explain INPUT... --output DIR``, the bundle's inference pipeline without writing configs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["ALL_METHODS", "main"]

ALL_METHODS = ("medxgan", "medxgan_lig", "gradcam", "ig", "gradient", "occlusion", "latentshift")
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medxgan-explain",
        description="Explain a binary classifier's decision on scans (NIfTI, DICOM, PNG): saliency maps and "
        "counterfactuals written next to the source geometry. Runs bundle/configs/inference.json.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or datalist JSON files")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(ALL_METHODS))
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--section", default="test", help="datalist section to explain (default: test)")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--classifier-ckpt", help="classifier weights (default: the bundle's models/model.pt)")
    parser.add_argument("--generator-ckpt", help="generator weights (default: the bundle's models/generator.pt)")
    parser.add_argument("--encoder-ckpt", help="encoder weights (default: the bundle's models/encoder.pt)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every input and replace existing files (default: skip inputs already complete in --output)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the inference bundle; exit status 0 when every input was explained, 1 when some failed, 2 on misuse."""
    args = _parser().parse_args(argv)
    import torch
    from monai.bundle import ConfigWorkflow

    from medxgan_monai.handlers import InferenceFailed

    bundle = Path(args.bundle)
    overrides = {
        "bundle_root": str(bundle),
        "input": [str(Path(p)) for p in args.inputs],
        "section": args.section,
        "output_dir": str(Path(args.output)),
        "methods": list(args.methods),
        "overwrite": args.overwrite,
    }
    if args.device:
        overrides["device"] = torch.device(args.device)
    for key in ("classifier_ckpt", "generator_ckpt", "encoder_ckpt"):
        if getattr(args, key):
            overrides[key] = str(Path(getattr(args, key)))
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    try:
        workflow.initialize()
        workflow.run()
    except Exception as error:
        failure = _cause(error)
        if isinstance(failure, InferenceFailed):
            logging.getLogger("medxgan-explain").error("%s", failure)
            return 1
        if isinstance(failure, (FileNotFoundError, ValueError)):
            print(f"medxgan-explain: error: {failure}", file=sys.stderr)
            return 2
        raise
    finally:
        workflow.finalize()
    return 0


def _cause(error: BaseException) -> BaseException:
    """MONAI wraps errors raised inside config expressions in RuntimeError; find the original."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None and type(error) is RuntimeError:
        error = error.__cause__
    return error


if __name__ == "__main__":
    sys.exit(main())
