"""Network weights as plain state dicts: saved atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path

from medxgan_monai.io.atomic import atomic_output

__all__ = ["load_weights", "save_state_dict"]


def save_state_dict(module, path: str | os.PathLike) -> str:
    """Save ``module.state_dict()`` to ``path`` atomically (a plain state dict, loadable with ``weights_only=True``)."""
    import torch  # here, not at the top: the rest of ``medxgan_monai.io`` works without torch

    with atomic_output(path, overwrite=True) as tmp:
        torch.save(module.state_dict(), tmp)
    return str(path)


def load_weights(module, path: str | os.PathLike | None, map_location="cpu"):
    """Load a plain state dict from ``path`` into ``module`` and return the module (for configs); ``None`` when
    ``path`` is ``None`` (an optional network switched off, e.g. ``--counterfactual_encoder_ckpt null``).

    Raises:
        FileNotFoundError: naming the missing weights file and the command that makes it.
    """
    import torch

    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: weights file not found (train it with the bundle, see bundle/docs/README.md)")
    module.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return module.to(map_location)
