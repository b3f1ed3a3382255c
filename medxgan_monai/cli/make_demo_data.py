"""Command line: build the demo benchmark (see :func:`medxgan_monai.data.build_demo_dataset`), and with ``--volumes``
the demo volumes beside it (:func:`medxgan_monai.data.build_demo_volumes`, in ``OUT_DIR/volumes``); with
``--anatomy chest_cr`` the chest radiograph benchmark instead (:func:`medxgan_monai.data.build_radiograph_dataset`);
with ``--anatomy mni152_3d`` the native-3D benchmark (:data:`medxgan_monai.data.BENCHMARK_3D`, built by
:func:`~medxgan_monai.data.build_demo_volumes`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from medxgan_monai.data import (
    BENCHMARK_3D,
    DemoDataSettings,
    DemoVolumeSettings,
    RadiographDataSettings,
    build_demo_dataset,
    build_demo_volumes,
    build_radiograph_dataset,
)
from medxgan_monai.io import atomic_replace_dir

__all__ = ["main"]

#: the default settings of each anatomy; the flags left out keep them (lesions included). mni152_3d's are the
#: native-3D benchmark's 2D demo settings (its grid, z range, split sizes and lesions)
ANATOMIES = {"mni152": DemoDataSettings(), "chest_cr": RadiographDataSettings(), "mni152_3d": BENCHMARK_3D.demo}
#: the native-3D benchmark's grid, in words
_GRID_3D = (
    f"{BENCHMARK_3D.demo.size} x {BENCHMARK_3D.demo.size} x {BENCHMARK_3D.slices} voxels "
    f"of {BENCHMARK_3D.slice_step_mm:g} mm"
)
#: the flags each anatomy refuses, and why
NOT_APPLICABLE = {
    "chest_cr": {
        "volumes": "the demo volumes are MNI152 brain volumes",
        "volume_slices": "the demo volumes are MNI152 brain volumes",
    },
    "mni152_3d": {
        "size": f"its volumes are {_GRID_3D}",
        "volumes": "it is made of volumes already (sections training, validation and test)",
        "volume_slices": f"its volumes are {_GRID_3D}",
    },
}


def _parser() -> argparse.ArgumentParser:
    volume_defaults = DemoVolumeSettings()
    parser = argparse.ArgumentParser(
        prog="make_demo_data",
        description="Build a deterministic demo benchmark: the MNI152 brain MR slices (NIfTI and DICOM images, masks "
        "and datalists), crops of a real chest radiograph with lung nodules (NIfTI images, masks and a datalist) or "
        "MNI152 brain MR volumes with 3D lesions (NIfTI volumes, masks and a datalist).",
    )
    parser.add_argument("out_dir", help="output folder; created atomically (it appears only when complete)")
    parser.add_argument(
        "--anatomy",
        choices=sorted(ANATOMIES),
        default="mni152",
        help="mni152: axial brain MR slices of the MNI152 template with tumour-like lesions (default); chest_cr: crops "
        "of pydicom-data's PA chest CR with lung nodules (needs pydicom-data); mni152_3d: the native-3D benchmark, "
        f"MNI152 brain volumes of {_GRID_3D} with 3D lesions ({BENCHMARK_3D.dicom_volumes} test "
        "volumes also as DICOM series)",
    )

    def per_anatomy(attribute, flag: str = "") -> str:
        return ", ".join(
            f"{name} {attribute(settings)}"
            for name, settings in ANATOMIES.items()
            if flag not in NOT_APPLICABLE.get(name, {})
        )

    parser.add_argument(
        "--size",
        type=int,
        help=f"image width and height in pixels (default: {per_anatomy(lambda s: s.size, 'size')})",
    )
    parser.add_argument("--seed", type=int, help=f"default: {per_anatomy(lambda s: s.seed)}")
    parser.add_argument("--n-train", type=int, help=f"default: {per_anatomy(lambda s: s.n_train)}")
    parser.add_argument("--n-val", type=int, help=f"default: {per_anatomy(lambda s: s.n_val)}")
    parser.add_argument("--n-test", type=int, help=f"default: {per_anatomy(lambda s: s.n_test)}")
    parser.add_argument(
        "--lesion-area",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="area of one lesion (mni152_3d: of its central cross-section) as a fraction of the field of view "
        f"(default: {per_anatomy(lambda s: ' '.join(map(str, s.lesions.area_fraction)))})",
    )
    parser.add_argument(
        "--lesion-contrast",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="lesion intensity change relative to the mean intensity of the region lesions are drawn in (brain, lung "
        f"fields) (default: {per_anatomy(lambda s: ' '.join(map(str, s.lesions.contrast)))})",
    )
    parser.add_argument(
        "--volumes",
        type=int,
        default=0,
        metavar="N",
        help="also build N 3D test volumes (half positive, lesions spanning slices) as NIfTI files and DICOM series "
        "in OUT_DIR/volumes, with their own datalist.json (sections test and test_dicom); 0: none; mni152 only",
    )
    parser.add_argument(
        "--volume-slices",
        type=int,
        metavar="K",
        help=f"axial slices per volume (default {volume_defaults.slices}), {volume_defaults.slice_step_mm:g} mm apart",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    return parser


def _settings(args: argparse.Namespace) -> DemoDataSettings | RadiographDataSettings:
    """The chosen anatomy's settings: its defaults, replaced by the flags given (the lesion ranges keep its other
    lesion settings, e.g. the chest's bright-only nodules)."""
    defaults = ANATOMIES[args.anatomy]
    given = {name: getattr(args, name) for name in ("size", "seed", "n_train", "n_val", "n_test")}
    lesions = {
        "area_fraction": tuple(args.lesion_area) if args.lesion_area else None,
        "contrast": tuple(args.lesion_contrast) if args.lesion_contrast else None,
    }
    lesion_settings = replace(defaults.lesions, **{k: v for k, v in lesions.items() if v is not None})
    return replace(defaults, **{k: v for k, v in given.items() if v is not None}, lesions=lesion_settings)


def _refused_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """One line per flag given, other than at its default, that ``--anatomy`` does not use."""
    return [
        f"--{name.replace('_', '-')} cannot be combined with --anatomy {args.anatomy}: {reason}"
        for name, reason in NOT_APPLICABLE.get(args.anatomy, {}).items()
        if getattr(args, name) != parser.get_default(name)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    refused = _refused_flags(args, parser)
    if refused:
        print("\n".join(f"error: {line}" for line in refused), file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
        if args.anatomy == "chest_cr":
            manifest = build_radiograph_dataset(args.out_dir, settings, overwrite=args.overwrite)
        elif args.anatomy == "mni152_3d":
            manifest = build_demo_volumes(args.out_dir, replace(BENCHMARK_3D, demo=settings), overwrite=args.overwrite)
        elif args.volumes == 0:
            manifest = build_demo_dataset(args.out_dir, settings, overwrite=args.overwrite)
        else:
            slices = DemoVolumeSettings().slices if args.volume_slices is None else args.volume_slices
            volume_settings = DemoVolumeSettings(n_volumes=args.volumes, slices=slices, demo=settings)
            # one folder for both, so that OUT_DIR appears only when the images and the volumes are complete
            with atomic_replace_dir(args.out_dir, overwrite=args.overwrite) as staging:
                # the builder replaces its folder atomically: here the empty staging folder, which is ours
                manifest = build_demo_dataset(staging, settings, overwrite=True)
                manifest["volumes"] = build_demo_volumes(staging / "volumes", volume_settings)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("counts", "leakage_check_auc", "build_seconds")}
    if "volumes" in manifest:
        summary["volumes"] = {k: manifest["volumes"][k] for k in ("counts", "build_seconds")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
