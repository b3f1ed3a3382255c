"""A crash-safe spool for DICOM instances received by the node: incoming -> processing -> done or failed.

Every instance is a file named by its SOPInstanceUID; moves between the folders are atomic renames, so a restart finds
each instance in exactly one place and :meth:`Spool.recover` puts interrupted work back in the queue.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from medxgan_monai.io.atomic import atomic_output
from medxgan_monai.io.dicom_derived import MANUFACTURER

__all__ = ["Spool", "instance_problem"]

logger = logging.getLogger(__name__)

STATES = ("incoming", "processing", "done", "failed")


def instance_problem(dataset: Dataset, modalities: tuple[str, ...] | None = None) -> str | None:
    """Why a received instance does not fit a 2D image classifier (``None`` when it fits): no pixel data, several
    frames, a modality outside ``modalities`` (any when ``None``), or an explanation this tool made (which a
    routing rule may send back; explaining it again would loop)."""
    if "PixelData" not in dataset:
        return f"no pixel data (SOP class {dataset.get('SOPClassUID', 'unknown')})"
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return f"multi-frame instance with {frames} frames; expected one 2D image"
    modality = str(dataset.get("Modality", ""))
    if modalities and modality not in modalities:
        return f"modality {modality or 'unknown'} is not one of {list(modalities)}"
    if str(dataset.get("Manufacturer", "")) == MANUFACTURER:
        return "an explanation made by medxgan-monai; not explained again"
    return None


class Spool:
    """Folders ``incoming``, ``processing``, ``done``, ``failed`` (instances) and ``results`` (explanations) under
    ``root``.

    Example::

        spool = Spool("spool/")
        spool.recover()                      # after a restart: interrupted instances go back to incoming
        spool.put(dataset)                   # written atomically as incoming/<SOPInstanceUID>.dcm
        for path in spool.claim():           # moved to processing/
            ...
            spool.finish(path, succeeded=True)
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        self.results = self.root / "results"
        self.results.mkdir(exist_ok=True)

    def folder(self, state: str) -> Path:
        return self.root / state

    def put(self, dataset: Dataset) -> Path | None:
        """Store ``dataset`` (with its ``file_meta``) in ``incoming``; ``None`` when this instance is already queued,
        being processed or done (a resend must not produce a second explanation)."""
        name = f"{dataset.SOPInstanceUID}.dcm"
        if any((self.folder(state) / name).exists() for state in ("incoming", "processing", "done")):
            logger.info("instance %s already received; not queued again", dataset.SOPInstanceUID)
            return None
        path = self.folder("incoming") / name
        with atomic_output(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        return path

    def put_file(self, source: str | os.PathLike) -> Path | None:
        """:meth:`put` for a DICOM file."""
        return self.put(pydicom.dcmread(source))

    def claim(self, limit: int | None = None) -> list[Path]:
        """Move up to ``limit`` queued instances (oldest first) to ``processing`` and return their new paths."""
        queued = sorted(self.folder("incoming").glob("*.dcm"), key=lambda p: (p.stat().st_mtime, p.name))
        claimed = []
        for path in queued[:limit]:
            target = self.folder("processing") / path.name
            os.replace(path, target)
            claimed.append(target)
        return claimed

    def finish(self, path: Path, succeeded: bool) -> Path:
        """Move a processed instance to ``done`` or ``failed``."""
        target = self.folder("done" if succeeded else "failed") / path.name
        os.replace(path, target)
        return target

    def release(self, path: Path) -> Path:
        """Put an instance back in the queue (its results could not be delivered yet)."""
        target = self.folder("incoming") / path.name
        os.replace(path, target)
        return target

    def recover(self) -> int:
        """Return every instance left in ``processing`` by an interrupted run to ``incoming``; returns the count."""
        interrupted = sorted(self.folder("processing").glob("*.dcm"))
        for path in interrupted:
            self.release(path)
        if interrupted:
            logger.info("recovered %d interrupted instance(s) into the queue", len(interrupted))
        return len(interrupted)

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for _ in self.folder(state).glob("*.dcm")) for state in STATES}
