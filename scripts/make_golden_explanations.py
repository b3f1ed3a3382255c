"""Make tests/data/golden_explanations.npz: the golden values of tests/test_golden_explanations.py.

Takes the first ``--per-class`` negatives and positives of the demo test split (in datalist order), preprocesses
them with the inference bundle's preprocessing, and explains them in one float64 batch with every method of
``inference.json``, through ``explain_every_method`` of the test (so the test recomputes exactly what is stored).
Stores the images (float64), every map, the predictions.csv probabilities and the counterfactual images (float32:
all lie in [0, 1], so storing them costs at most 3e-8 of the test's 1e-6 tolerance), the image sources, the
explainer settings and the sha256 of each weight file.

Regenerate ONLY when a change is MEANT to change results (new weights, a changed setting, a fixed bug), and say so
in the commit message; a refactoring must pass the test against the file as it is.

Usage::

    OMP_NUM_THREADS=1 python scripts/make_golden_explanations.py [--datalist data/demo/datalist.json] [--per-class 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_TEST = REPO_ROOT / "tests" / "test_golden_explanations.py"


def golden_test_module():
    """tests/test_golden_explanations.py as a module (tests/ is no package)."""
    spec = importlib.util.spec_from_file_location("test_golden_explanations", GOLDEN_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_of_each_class(items: list[dict], per_class: int) -> list[dict]:
    """The first ``per_class`` negatives and positives of ``items``, in their order."""
    chosen = {label: [item for item in items if item["label"] == label][:per_class] for label in (0, 1)}
    if any(len(group) < per_class for group in chosen.values()):
        raise ValueError(f"the split has fewer than {per_class} images of a class")
    return [item for item in items if any(item is other for group in chosen.values() for other in group)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default=str(REPO_ROOT / "data" / "demo" / "datalist.json"))
    parser.add_argument("--section", default="test")
    parser.add_argument("--per-class", type=int, default=2, help="negatives and positives each")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from medxgan_monai.data import load_datalist

    golden = golden_test_module()
    config = golden.inference_config()
    preprocessing = config.get_parsed_content("preprocessing")
    items = first_of_each_class(load_datalist(args.datalist, args.section), args.per_class)
    images = torch.stack([preprocessing({"image": item["image"]})["image"].as_tensor() for item in items]).double()
    outputs = golden.explain_every_method(config, images)

    datalist_folder = Path(args.datalist).resolve().parent
    record = {
        "images": images.numpy(),
        "labels": np.array([item["label"] for item in items]),
        "sources": np.array([str(Path(item["image"]).resolve().relative_to(datalist_folder)) for item in items]),
        "settings": np.array(json.dumps(golden.explainer_settings(config))),
        "weight_sha256": np.array(json.dumps(golden.weight_hashes(config))),
    }
    record.update({golden.OUTPUT + name: value.astype(np.float32) for name, value in outputs.items()})
    golden.GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(golden.GOLDEN, **record)
    print(f"{golden.GOLDEN.relative_to(REPO_ROOT)}: {golden.GOLDEN.stat().st_size / 1e3:.0f} kB")
    for name, value in outputs.items():
        summary = value.ravel() if value.ndim == 1 else value.reshape(len(value), -1).max(1)
        print(f"  {name}: {' '.join(f'{v:.4f}' for v in summary)}" + ("" if value.ndim == 1 else " (max per image)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
