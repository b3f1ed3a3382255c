"""Ignite names used by the handlers, imported the MONAI way (optional at import time, typed for checkers)."""

from typing import TYPE_CHECKING

from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["Engine", "Events"]
