"""Localization and cost of medXGAN explanations by inversion strategy, and of the baselines, on masked positives.

Compares, on the same images and weights: the encoder alone (0 refinement steps), the amortised explainer (encoder
plus a short refinement), the same with the counterfactual term of :class:`~medxgan_monai.explain.LatentInverter`,
and the paper's per-image optimisation (1000 Adam steps from zero codes, learning rate 1e-3). Scores the difference
map |G(z_a, z_p) - G(z_a, 0)| and the latent IG map against the masks (mean and 95% bootstrap CI), and times each
strategy, in the same run; then the baselines of the inference bundle (input gradient, IG, Grad-CAM, occlusion,
Latent Shift) on the same images, for reference.

Usage::

    python scripts/compare_inversion.py [--datalist data/demo/datalist.json] [--section test] [--limit 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "validity_rate"]

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def validity_rate(probabilities, counterfactual_probabilities) -> float:
    """Counterfactual validity of a set of images: the mean of :func:`~medxgan_monai.metrics.counterfactual_validity`
    over the images the classifier calls positive (the evaluation's rule; NaN when it calls none positive)."""
    from medxgan_monai.metrics import counterfactual_validity

    return float(counterfactual_validity(probabilities, counterfactual_probabilities).nanmean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default="data/demo/datalist.json")
    parser.add_argument("--section", default="test")
    parser.add_argument("--limit", type=int, default=100, help="positives used (the first ones of the section)")
    parser.add_argument("--refine-steps", type=int, default=25)
    parser.add_argument("--paper-steps", type=int, default=1000)
    parser.add_argument("--counterfactual-weight", type=float, default=1.0, help="of the amortised + cf variant")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--no-baselines", action="store_true", help="skip the baseline rows")
    parser.add_argument("--bundle", default=str(BUNDLE))
    parser.add_argument("--generator-ckpt", help="default: the bundle's models/generator.pt")
    parser.add_argument("--encoder-ckpt", help="default: the bundle's models/encoder.pt")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from medxgan_monai.bundle import inference_config
    from medxgan_monai.data import load_datalist
    from medxgan_monai.explain import Explainers, class_probability
    from medxgan_monai.metrics import bootstrap_ci, pointing_game, relevance_mass, top_k_iou
    from medxgan_monai.transforms import load_scan

    weights = {key: getattr(args, key) for key in ("generator_ckpt", "encoder_ckpt") if getattr(args, key)}
    config = inference_config(args.bundle, **weights)
    preprocessing = config.get_parsed_content("preprocessing")
    classifier, generator = config.get_parsed_content("classifier_net"), config.get_parsed_content("generator")
    encoder = config.get_parsed_content("encoder")
    size = tuple(config["image_size"])

    items = [i for i in load_datalist(args.datalist, args.section, require_mask=True) if i["label"] == 1]
    items = items[: args.limit]
    images = torch.stack([preprocessing({"image": i["image"]})["image"].as_tensor() for i in items])
    masks = torch.stack([load_scan(i["mask"]).as_tensor() for i in items])
    masks = (F.interpolate(masks.float(), size=size, mode="nearest") > 0.5).float()

    # (encoder, inversion settings) per strategy
    strategies = {
        "encoder only (0 steps)": (encoder, dict(inversion_steps=0)),
        f"amortised (encoder + {args.refine_steps} steps, lr 1e-2)": (
            encoder,
            dict(inversion_steps=args.refine_steps, inversion_learning_rate=1e-2),
        ),
        f"amortised + counterfactual term (weight {args.counterfactual_weight:g})": (
            encoder,
            dict(
                inversion_steps=args.refine_steps,
                inversion_learning_rate=1e-2,
                counterfactual_weight=args.counterfactual_weight,
            ),
        ),
        f"paper ({args.paper_steps} steps from zeros, lr 1e-3)": (
            None,
            dict(inversion_steps=args.paper_steps, inversion_learning_rate=1e-3),
        ),
    }
    batches = [images[s : s + args.batch_size] for s in range(0, len(images), args.batch_size)]
    with torch.no_grad():
        probabilities = class_probability(classifier, images)
    print(f"{len(items)} positives of {args.datalist} [{args.section}]; 95% bootstrap CIs")
    print("| inversion | map | pointing game | relevance mass | top-GT IoU | cf flips | s / image |")
    print("|---|---|---|---|---|---|---|")

    def scores(maps: torch.Tensor) -> str:
        cells = []
        for metric in (pointing_game, relevance_mass, top_k_iou):
            mean, low, high = bootstrap_ci(metric(maps, masks).numpy())
            cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        return " | ".join(cells)

    for name, (strategy_encoder, settings) in strategies.items():
        explainers = Explainers(["medxgan", "medxgan_lig"], classifier, generator, strategy_encoder, settings)
        start = time.perf_counter()
        parts = [explainers.explain(batch)[0] for batch in batches]
        seconds = (time.perf_counter() - start) / len(images)
        # both maps share the counterfactual G(z_a, 0)
        flips = validity_rate(probabilities, torch.cat([p["medxgan"].counterfactual_probability for p in parts]))
        for method in ("medxgan", "medxgan_lig"):
            maps = torch.cat([p[method].maps for p in parts])
            print(f"| {name} | {method} | {scores(maps)} | {flips:.3f} | {seconds:.3f} |", flush=True)
    if not args.no_baselines:
        baselines = [m for m in config.get_parsed_content("methods") if not m.startswith("medxgan")]
        explainers = Explainers(
            baselines, classifier, generator, encoder, config.get_parsed_content("explainers#settings")
        )
        for name, explainer in explainers.explainers.items():
            start = time.perf_counter()
            maps = torch.cat([explainer(batch) for batch in batches])
            seconds = (time.perf_counter() - start) / len(images)
            print(f"| baseline | {name} | {scores(maps)} | - | {seconds:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
