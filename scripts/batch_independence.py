"""Does an image's medXGAN explanation depend on the other images of its batch? Measured on the shipped networks.

Explains the first ``--images`` images of a datalist section with the inference bundle's medXGAN explainer three
ways: all in one batch, each alone, and each beside a very different image (its intensity inverse). Prints, per
precision and per output (every map, counterfactual, probability and code), the largest absolute difference between
the batch and the single calls, and between "beside" and single. In float64 the differences show any coupling of
the images (in exact arithmetic there is none); in float32 they also hold kernel rounding (BLAS and oneDNN pick
kernels by batch size and CPU), and the last column gives its scale: the float32 single call against the float64
one.

Usage::

    python scripts/batch_independence.py [--datalist data/demo/datalist.json] [--section test] [--images 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
#: the medXGAN methods (one shared inversion)
METHODS = ("medxgan_ig", "medxgan", "medxgan_lig")


def outputs(explainers, images) -> dict:
    """Every tensor of the medXGAN methods' attributions of ``images`` by name (``<method>:<part>``)."""
    import torch

    with torch.no_grad():
        attributions, _ = explainers.explain(images)
    named = {}
    for method, attribution in attributions.items():
        named[f"{method}:map"] = attribution.maps
        named[f"{method}:counterfactual"] = attribution.counterfactual
        named[f"{method}:counterfactual_probability"] = attribution.counterfactual_probability
        if attribution.sweep is not None:
            named[f"{method}:sweep_frames"] = attribution.sweep.frames
        named.update({f"{method}:{name}": value for name, value in attribution.details.items()})
    return named


def explain_three_ways(explainer, images):
    """Outputs of the whole batch, of each image alone and of each image beside its inverse, per output name."""
    import torch

    def first_of_each(calls):
        return {name: torch.cat([call[name][:1] for call in calls]) for name in calls[0]}

    batch = outputs(explainer, images)
    single = first_of_each([outputs(explainer, image[None]) for image in images])
    beside = first_of_each([outputs(explainer, torch.stack([image, 1 - image])) for image in images])
    return batch, single, beside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default="data/demo/datalist.json")
    parser.add_argument("--section", default="test")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--bundle", default=str(BUNDLE))
    args = parser.parse_args(argv)

    import torch

    from medxgan_monai.bundle import inference_config
    from medxgan_monai.data import load_datalist

    config = inference_config(args.bundle, methods=list(METHODS))
    preprocessing = config.get_parsed_content("preprocessing")
    # the loaded networks themselves (not loaders), so that their precision can be changed below
    config["explainers#generator"], config["explainers#encoder"] = "@generator", "@encoder"
    explainer = config.get_parsed_content("explainers")
    items = load_datalist(args.datalist, args.section)[: args.images]
    images = torch.stack([preprocessing({"image": item["image"]})["image"].as_tensor() for item in items])

    results = {}
    for dtype in (torch.float64, torch.float32):
        for network in ("classifier_net", "generator", "encoder"):
            config.get_parsed_content(network).to(dtype)
        results[dtype] = explain_three_ways(explainer, images.to(dtype))

    print(f"{len(images)} images of {args.datalist} [{args.section}], shipped networks, CPU")
    print(
        "| output | f64 batch vs single | f64 beside vs single | f32 batch vs single | f32 beside vs single "
        "| f32 vs f64 (single) |"
    )
    print("|---|---|---|---|---|---|")
    exact, rounded = results[torch.float64], results[torch.float32]
    for name in exact[1]:
        cells = []
        for batch, single, beside in (exact, rounded):
            cells += [(batch[name] - single[name]).abs().max(), (beside[name] - single[name]).abs().max()]
        cells.append((rounded[1][name].double() - exact[1][name]).abs().max())
        print(f"| {name} | " + " | ".join(f"{cell.item():.2e}" for cell in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
