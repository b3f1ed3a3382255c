"""Exported networks for runtimes without this package: the generator and encoder as ``torch.export`` programs
(``.pt2``); the classifier with MONAI's ``ckpt_export`` (TorchScript), see the README."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medxgan_monai.io.atomic import atomic_output

__all__ = ["export_network", "load_exported"]


def export_network(
    module: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Export ``module`` (in eval mode) with ``torch.export`` for inputs shaped like ``example_inputs``, the batch
    dimension left dynamic, and save it atomically to ``path`` (``.pt2``).

    Example::

        export_network(generator, (torch.randn(2, 1000), torch.randn(2, 100)), "generator.pt2")
        load_exported("generator.pt2")(z_a, z_p)
    """
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with torch.no_grad():
        program = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.export.save(program, str(tmp))
    return Path(path)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The module of a program saved by :func:`export_network`."""
    return torch.export.load(str(path)).module()
