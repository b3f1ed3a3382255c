"""Command line: ``medxgan-export-bundle DIR`` copies the installed package's MONAI bundle folder to ``DIR``.

Then, from inside it, the bundle runs as a model-zoo bundle does::

    medxgan-export-bundle medxgan_bundle
    cd medxgan_bundle
    python -m monai.bundle run --config_file configs/inference.json --input /path/to/scans --output_dir /path/to/out
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from medxgan_monai.bundle import DEFAULT_BUNDLE

__all__ = ["export_bundle", "main"]

#: what a bundle folder holds (the model zoo's layout)
BUNDLE_PARTS = ("configs", "models", "docs", "schema", "LICENSE")


def export_bundle(destination: str | Path, bundle_root: str | Path = DEFAULT_BUNDLE) -> Path:
    """Copy the bundle folder ``bundle_root`` (configs, weights, docs, schema, license) to ``destination``, which
    must not exist yet (nothing a user has is overwritten); the copy is complete or absent."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination}: already exists; choose a new folder")
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for part in BUNDLE_PARTS:
        source = Path(bundle_root) / part
        if source.is_dir():
            shutil.copytree(source, staging / part)
        else:
            staging.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / part)
    staging.rename(destination)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medxgan-export-bundle", description=__doc__.splitlines()[0])
    parser.add_argument("destination", help="new folder for the bundle")
    args = parser.parse_args(argv)
    try:
        folder = export_bundle(args.destination)
    except (FileExistsError, FileNotFoundError) as error:
        print(f"medxgan-export-bundle: error: {error}", file=sys.stderr)
        return 2
    print(f"bundle exported to {folder}; run it from there with:")
    print("  python -m monai.bundle run --config_file configs/inference.json --input SCANS --output_dir OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
