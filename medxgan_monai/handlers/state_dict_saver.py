"""Export plain state dicts (for example the EMA generator and the encoder) when training completes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from medxgan_monai.bundle import save_state_dict
from medxgan_monai.handlers._ignite import Engine, Events

__all__ = ["StateDictExporter"]


class StateDictExporter:
    """Write ``{file name: module}`` as plain state dicts into ``output_dir`` at the end of a run (atomically).

    Attach it before an ``MLFlowHandler`` whose ``artifacts`` name these files, so they exist when MLflow logs them.

    Example (config)::

        {"_target_": "medxgan_monai.handlers.StateDictExporter", "output_dir": "@ckpt_dir",
         "modules": {"generator.pt": "@g_ema", "encoder.pt": "@e_network"}}
    """

    def __init__(self, output_dir: str | os.PathLike, modules: Mapping[str, nn.Module]) -> None:
        self.output_dir = Path(output_dir)
        self.modules = dict(modules)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for filename, module in self.modules.items():
            save_state_dict(module, self.output_dir / filename)
