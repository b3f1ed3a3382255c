"""Command line: build the demo benchmark (see :func:`medxgan_monai.data.build_demo_dataset`), and with ``--volumes``
the demo volumes beside it (:func:`medxgan_monai.data.build_demo_volumes`, in ``OUT_DIR/volumes``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from medxgan_monai.data import (
    DemoDataSettings,
    DemoVolumeSettings,
    LesionSettings,
    build_demo_dataset,
    build_demo_volumes,
)
from medxgan_monai.io import atomic_replace_dir

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    defaults = DemoDataSettings()
    lesion_defaults = LesionSettings()
    volume_defaults = DemoVolumeSettings()
    parser = argparse.ArgumentParser(
        prog="make_demo_data",
        description="Build the deterministic MNI152 demo benchmark: NIfTI and DICOM images, masks and datalists.",
    )
    parser.add_argument("out_dir", help="output folder; created atomically (it appears only when complete)")
    parser.add_argument("--size", type=int, default=defaults.size, help="image width and height in pixels")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-val", type=int, default=defaults.n_val)
    parser.add_argument("--n-test", type=int, default=defaults.n_test)
    parser.add_argument(
        "--lesion-area",
        type=float,
        nargs=2,
        default=lesion_defaults.area_fraction,
        metavar=("MIN", "MAX"),
        help="area of one lesion as a fraction of the field of view",
    )
    parser.add_argument(
        "--lesion-contrast",
        type=float,
        nargs=2,
        default=lesion_defaults.contrast,
        metavar=("MIN", "MAX"),
        help="lesion intensity change relative to the mean brain intensity",
    )
    parser.add_argument(
        "--volumes",
        type=int,
        default=0,
        metavar="N",
        help="also build N 3D test volumes (half positive, lesions spanning slices) as NIfTI files and DICOM series "
        "in OUT_DIR/volumes, with their own datalist.json (sections test and test_dicom); 0: none",
    )
    parser.add_argument(
        "--volume-slices",
        type=int,
        default=volume_defaults.slices,
        metavar="K",
        help=f"axial slices per volume (default %(default)s), {volume_defaults.slice_step_mm:g} mm apart",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = DemoDataSettings(
            size=args.size,
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            lesions=LesionSettings(area_fraction=tuple(args.lesion_area), contrast=tuple(args.lesion_contrast)),
        )
        if args.volumes == 0:
            manifest = build_demo_dataset(args.out_dir, settings, overwrite=args.overwrite)
        else:
            volume_settings = DemoVolumeSettings(n_volumes=args.volumes, slices=args.volume_slices, demo=settings)
            # one folder for both, so that OUT_DIR appears only when the images and the volumes are complete
            with atomic_replace_dir(args.out_dir, overwrite=args.overwrite) as staging:
                # the builder replaces its folder atomically: here the empty staging folder, which is ours
                manifest = build_demo_dataset(staging, settings, overwrite=True)
                manifest["volumes"] = build_demo_volumes(staging / "volumes", volume_settings)
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("counts", "leakage_check_auc", "build_seconds")}
    if "volumes" in manifest:
        summary["volumes"] = {k: manifest["volumes"][k] for k in ("counts", "build_seconds")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
