"""Export the bundle's networks for runtimes without this package: the classifier as TorchScript (MONAI's
``ckpt_export``), the generator and encoder as ``torch.export`` programs.

Usage::

    python scripts/export_models.py [--output outputs/exported] [--bundle bundle]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medxgan_monai.bundle import DEFAULT_BUNDLE, config_value, inference_config

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="outputs/exported", help="folder for model.ts, generator.pt2, encoder.pt2")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from monai.bundle import ckpt_export

    from medxgan_monai.deploy import export_network

    bundle, output = Path(args.bundle), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    configs = bundle / "configs"
    classifier_path = output / "model.ts"
    if classifier_path.exists() and not args.overwrite:
        print(f"{classifier_path}: exists; pass --overwrite", file=sys.stderr)
        return 2
    ckpt_export(
        net_id="network_def",
        filepath=str(classifier_path),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        bundle_root=config_value(str(bundle)),  # the folder, never a config expression
    )
    config = inference_config(bundle)
    generator, encoder = config.get_parsed_content("generator"), config.get_parsed_content("encoder")
    size = tuple(config["image_size"])
    codes = (torch.randn(2, config["anatomy_dim"]), torch.randn(2, config["pathology_dim"]))
    export_network(generator, codes, output / "generator.pt2", overwrite=args.overwrite)
    export_network(encoder, (torch.rand(2, 1, *size),), output / "encoder.pt2", overwrite=args.overwrite)
    print(f"exported {classifier_path}, {output / 'generator.pt2'}, {output / 'encoder.pt2'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
