"""Export plain state dicts (for example the EMA generator and the encoder) when training completes."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.io.weights import save_state_dict

__all__ = ["StateDictExporter"]

logger = logging.getLogger(__name__)


class StateDictExporter:
    """Write ``{file name: module}`` as plain state dicts into ``output_dir`` (atomically).

    Without ``metric_name`` the files are written once, when the run completes. With ``metric_name`` they are
    written at the end of every epoch in which that engine metric improves (the best epoch is kept, for example the
    encoder with the best validation PSNR), and at completion only if the metric never appeared. Epochs before
    ``start_epoch`` do not count (for example those before the encoder starts training, whose scores mean nothing).

    Attach it after the handler that computes the metric, and before an ``MLFlowHandler`` whose ``artifacts`` name
    these files. Put the exporter among the checkpoint's objects so that a resumed run remembers the best score.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.StateDictExporter", "output_dir": "@ckpt_dir",
         "modules": {"encoder.pt": "@e_network"}, "metric_name": "val_inversion_psnr"}
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        modules: Mapping[str, nn.Module],
        metric_name: str | None = None,
        greater_is_better: bool = True,
        start_epoch: int = 1,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.modules = dict(modules)
        self.metric_name = metric_name
        self.greater_is_better = greater_is_better
        self.start_epoch = start_epoch
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.metric_name is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.export_if_better)
        engine.add_event_handler(Events.COMPLETED, self)

    def export_if_better(self, engine: Engine) -> None:
        score = engine.state.metrics.get(self.metric_name)
        if engine.state.epoch < self.start_epoch or score is None or not math.isfinite(score):
            return
        if self.best_score is not None:
            improved = score > self.best_score if self.greater_is_better else score < self.best_score
            if not improved:
                return
        self.best_score, self.best_epoch = float(score), engine.state.epoch
        self.export()
        logger.info(
            "epoch %d: %s %.4f is the best so far, exported %s",
            self.best_epoch,
            self.metric_name,
            self.best_score,
            ", ".join(self.modules),
        )

    def __call__(self, engine: Engine) -> None:
        if self.metric_name is None or self.best_score is None:
            self.export()

    def export(self) -> None:
        for filename, module in self.modules.items():
            save_state_dict(module, self.output_dir / filename)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
