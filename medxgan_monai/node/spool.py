"""A crash-safe spool for DICOM instances received by the node: incoming -> processing -> done or failed.

Every instance is a file named by its SOPInstanceUID, which must be a valid DICOM UID (digits and dots, at most 64
characters) before it names anything, so no received value can point outside the spool. An instance is written
completely in ``tmp`` and then renamed into ``incoming``, so the worker never sees a half-written file; moves between
the folders are atomic renames, so a restart finds each instance in exactly one place and :meth:`Spool.recover` puts
interrupted work back in the queue.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID

from medxgan_monai.io.atomic import atomic_output, atomic_write_text
from medxgan_monai.io.dicom_derived import MANUFACTURER
from medxgan_monai.io.series import SeriesError, read_dicom_multiframe

__all__ = ["InvalidUIDError", "Spool", "instance_problem", "is_valid_uid", "valid_instance_uid"]

logger = logging.getLogger(__name__)

STATES = ("incoming", "processing", "done", "failed")
#: longest UID the standard allows (PS3.5 9.1)
MAX_UID_LENGTH = 64


class InvalidUIDError(ValueError):
    """A received instance whose SOP Instance UID is not a valid DICOM UID; it is not stored."""


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a valid DICOM UID (PS3.5 9.1): components of digits without leading zeros (except a lone
    ``0``) separated by single dots, at most 64 characters. ``fullmatch`` so that a trailing newline is refused too."""
    return isinstance(value, str) and len(value) <= MAX_UID_LENGTH and re.fullmatch(RE_VALID_UID, value) is not None


def valid_instance_uid(dataset: Dataset) -> str:
    """The dataset's SOP Instance UID, checked before it names anything.

    Raises:
        InvalidUIDError: it is missing or not a valid UID (the value is not quoted: it is untrusted, may be anything).
    """
    uid = dataset.get("SOPInstanceUID")
    if not is_valid_uid(uid):
        raise InvalidUIDError("SOP Instance UID is missing or not a valid DICOM UID; instance not stored")
    return str(uid)


def instance_problem(dataset: Dataset, modalities: tuple[str, ...] | None = None) -> str | None:
    """Why a received instance does not fit a 2D image classifier (``None`` when it fits): no pixel data, several
    frames that are not an enhanced multi-frame volume (:func:`~medxgan_monai.io.series.read_dicom_multiframe`: each
    frame's plane position, evenly spaced), a modality outside ``modalities`` (any when ``None``), or an explanation
    this tool made (which a routing rule may send back; explaining it again would loop)."""
    if "PixelData" not in dataset:
        return f"no pixel data (SOP class {dataset.get('SOPClassUID', 'unknown')})"
    frames = int(dataset.get("NumberOfFrames", 1) or 1)  # not a number: raised (a C-STORE answers 0xC000)
    if frames > 1:
        try:  # an enhanced multi-frame volume is explained slice by slice, as one volume
            read_dicom_multiframe(dataset, origin="instance")
        except SeriesError as error:
            return f"multi-frame instance with {frames} frames that is not a volume of slices: {error.problem}"
    modality = str(dataset.get("Modality", ""))
    if modalities and modality not in modalities:
        return f"modality {modality or 'unknown'} is not one of {list(modalities)}"
    if str(dataset.get("Manufacturer", "")) == MANUFACTURER:
        return "an explanation made by medxgan-monai; not explained again"
    return None


class Spool:
    """Folders ``incoming``, ``processing``, ``done``, ``failed`` (instances), ``tmp`` (instances being written) and
    ``results`` (explanations) under ``root``.

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
        # outside every watched folder, on the same file system (an atomic rename moves a finished file in)
        self.staging = self.root / "tmp"
        self.staging.mkdir(exist_ok=True)

    def folder(self, state: str) -> Path:
        return self.root / state

    def put(self, dataset: Dataset) -> Path | None:
        """Store ``dataset`` (with its ``file_meta``) in ``incoming``; ``None`` when this instance is already queued,
        being processed or done (a resend must not produce a second explanation).

        Raises:
            InvalidUIDError: its SOP Instance UID is missing or not a valid UID.
        """
        uid = valid_instance_uid(dataset)
        name = f"{uid}.dcm"
        if any((self.folder(state) / name).exists() for state in ("incoming", "processing", "done")):
            logger.info("instance %s already received; not queued again", uid)
            return None
        # written completely outside ``incoming``, then renamed in: the worker never claims a partial file
        staged = self.staging / name
        with atomic_output(staged, overwrite=True) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        path = self.folder("incoming") / name
        os.replace(staged, path)
        return path

    def put_file(self, source: str | os.PathLike) -> Path | None:
        """:meth:`put` for a DICOM file."""
        return self.put(pydicom.dcmread(source))

    def claim(self, limit: int | None = None) -> list[Path]:
        """Move up to ``limit`` queued instances (oldest first) to ``processing`` and return their new paths."""
        queued = sorted(self._instances("incoming"), key=lambda p: (p.stat().st_mtime, p.name))
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
        """Return every instance left in ``processing`` by an interrupted run to ``incoming`` and delete receptions it
        cut off in ``tmp``; returns the count. Call it before receiving (:meth:`DicomNode.start` does)."""
        interrupted = sorted(self._instances("processing"))
        for path in interrupted:
            self.release(path)
        if interrupted:
            logger.info("recovered %d interrupted instance(s) into the queue", len(interrupted))
        # instances whose reception was cut off were never acknowledged (the sender sends them again)
        for partial in self.staging.iterdir():
            partial.unlink()
        return len(interrupted)

    def explained_series(self, series_uid: str) -> dict | None:
        """What :meth:`record_series` last recorded for a series explained as one volume (``{"version": k,
        "instances": [file names in done]}``), or ``None``."""
        path = self._series_record(series_uid)
        return json.loads(path.read_text()) if path.is_file() else None

    def record_series(self, series_uid: str, version: int, instances: Sequence[str]) -> None:
        """Record that version ``version`` of a series' volume, made of ``instances`` (file names in ``done``), was
        delivered: an instance of it that arrives later makes the next version, with every instance."""
        path = self._series_record(series_uid)
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps({"version": int(version), "instances": sorted(instances)}))

    def _series_record(self, series_uid: str) -> Path:
        if not is_valid_uid(series_uid):  # it names a file: checked, whoever calls
            raise InvalidUIDError("Series Instance UID is not a valid DICOM UID; nothing recorded")
        return self.root / "series_explained" / f"{series_uid}.json"

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for _ in self._instances(state)) for state in STATES}

    def _instances(self, state: str) -> list[Path]:
        """The instances in a folder: files named ``<valid UID>.dcm`` only (nothing else is ever picked up)."""
        return [path for path in self.folder(state).glob("*.dcm") if is_valid_uid(path.name[: -len(".dcm")])]
