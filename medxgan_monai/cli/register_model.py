"""Register the explainer (classifier, generator, encoder, preprocessing, methods) as a new version of an MLflow
pyfunc model in the MLflow model registry.

Usage::

    python scripts/register_model.py --name medxgan-explainer [--tracking-uri sqlite:///outputs/registry/mlruns.db]
        [--methods medxgan_ig medxgan gradcam ig] [--classifier-ckpt C.pt --generator-ckpt G.pt --encoder-ckpt E.pt]
        [--counterfactual-encoder-ckpt F.pt]
        [--network-config outputs/gan/config_<run>.json]

Then ``mlflow.pyfunc.load_model("models:/medxgan-explainer/<version>")``, or serve it with
``MLFLOW_TRACKING_URI=<uri> mlflow models serve -m models:/medxgan-explainer/<version> --env-manager local``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medxgan_monai.bundle import DEFAULT_BUNDLE
from medxgan_monai.cli.explain import add_methods_argument, add_weights_arguments, weights_overrides

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="medxgan-explainer", help="registered model name")
    default_uri = f"sqlite:///{Path('outputs/registry/mlruns.db').resolve()}"
    parser.add_argument("--tracking-uri", default=default_uri, help=f"MLflow tracking/registry URI ({default_uri})")
    add_methods_argument(parser, None, "default: the bundle's `methods` setting, the default map medxgan_ig first")
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    add_weights_arguments(parser)
    parser.add_argument("--network-config", help="config file whose network_def is the classifier (a training run's)")
    args = parser.parse_args(argv)

    from medxgan_monai.deploy import register_explainer

    if args.tracking_uri.startswith("sqlite:///"):
        Path(args.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    overrides = weights_overrides(args)
    version = register_explainer(
        args.name, args.tracking_uri, args.bundle, args.methods, overrides, network_config=args.network_config
    )
    print(f"registered models:/{version.name}/{version.version} in {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
