"""Helpers that bundle configs call: tracking URI, run names and the executed-config record."""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from pathlib import Path

from monai.utils import path_to_sqlite_uri

__all__ = ["default_tracking_uri", "export_executed_config", "run_name"]

logger = logging.getLogger(__name__)


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<output_dir>/mlruns.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(Path(output_dir).resolve() / "mlruns.db"))


def run_name(prefix: str) -> str:
    """A run name unique to the second, e.g. ``train_classifier_20261126_120000``."""
    return f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}"


def export_executed_config(path: str | os.PathLike) -> str:
    """Write the configuration being executed (all config files merged, overrides applied) to ``path`` as JSON.

    MONAI records the executed config only under ``--tracking``; our configs track every run, so the config is
    taken from the running ``ConfigWorkflow``'s parser. Returns the path written, or an empty string when no
    workflow is running (the function was called outside a bundle run).
    """
    from monai.bundle import ConfigWorkflow

    for frame_info in inspect.stack(context=0):
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            parser = candidate.parser
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial")
            tmp.write_text(json.dumps(parser.get(), indent=2, default=str) + "\n")
            os.replace(tmp, path)
            return str(path)
    logger.warning("export_executed_config: no running bundle workflow found; nothing written")
    return ""
