"""Saving the binary confusion matrix that MONAI's ``ConfusionMatrix`` handler collects per image."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.io.atomic import atomic_write_csv

__all__ = ["ConfusionMatrixSaver"]


class ConfusionMatrixSaver:
    """Write ``confusion_matrix.csv`` (rows: true class, columns: predicted class) when an evaluator completes.

    It reads the per-image ``[TP, FP, TN, FN]`` details that ``monai.handlers.ConfusionMatrix(save_details=True,
    include_background=False)`` stores for the positive class, so it must be attached after that metric.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.ConfusionMatrixSaver", "metric_name": "test_confusion",
         "output_dir": "@output_dir"}
    """

    def __init__(self, metric_name: str, output_dir: str | os.PathLike, filename: str = "confusion_matrix.csv") -> None:
        self.metric_name = metric_name
        self.output_dir = Path(output_dir)
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise KeyError(
                f"ConfusionMatrixSaver: no details for metric '{self.metric_name}'; "
                "use monai.handlers.ConfusionMatrix(save_details=True) with that name"
            )
        tp, fp, tn, fn = (int(v) for v in torch.as_tensor(details).reshape(-1, 4).sum(dim=0).tolist())
        atomic_write_csv(
            self.output_dir / self.filename,
            ["true \\ predicted", "negative", "positive"],
            [["negative", tn, fp], ["positive", fn, tp]],
        )
