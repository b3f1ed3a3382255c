"""Per-item bookkeeping of a batch run's outputs, so an interrupted run resumes without redoing or losing work.

Each item's files are written into a private staging folder, then moved into the output folder under a *pending*
record that lists them, then the record becomes *done* (with the item's result row). A crash leaves either nothing of
the item in the output folder, or files named in a pending record, which a rerun may replace; a file the record does
not name (the user's own) is never replaced unless the run overwrites.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from medxgan_monai.io.atomic import atomic_write_text

__all__ = ["OutputLedger"]

LEDGER_DIR = ".medxgan_ledger"


class OutputLedger:
    """Which items of a batch run in ``output_dir`` are complete; stage and commit each item's outputs atomically.

    Args:
        output_dir: the run's output folder (the ledger lives in its ``.medxgan_ledger`` subfolder).
        overwrite: redo complete items and replace existing files (``--overwrite``).

    Example::

        ledger = OutputLedger("out/")
        todo, done_rows = ledger.split(items)            # complete items are skipped
        folder = ledger.staging("case_001")              # write the item's files here, then
        ledger.commit("case_001", {"probability": 0.93}) # move them into out/ and record the item as done
    """

    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.root = self.output_dir / LEDGER_DIR

    def _record(self, stem: str, state: str) -> Path:
        return self.root / f"{stem}.{state}.json"

    def _read(self, stem: str, state: str) -> dict | None:
        path = self._record(stem, state)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def completed(self, stem: str) -> dict | None:
        """The done record of ``stem`` (``{"files": [...], "row": {...}}``) if every file it lists still exists."""
        record = self._read(stem, "done")
        if record is None or not all((self.output_dir / name).is_file() for name in record["files"]):
            return None
        return record

    def split(self, items: Sequence[dict], stem_key: str = "stem") -> tuple[list[dict], list[dict]]:
        """Items still to do, and the result rows of those already complete (all of them to do when overwriting)."""
        if self.overwrite:
            return list(items), []
        todo, rows = [], []
        for item in items:
            record = self.completed(item[stem_key])
            if record is None:
                todo.append(item)
            else:
                rows.append(record["row"])
        return todo, rows

    def staging(self, stem: str) -> Path:
        """An empty private folder for ``stem``'s outputs (a leftover of an interrupted run is discarded)."""
        folder = self.root / "staging" / stem
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def _ours(self, stem: str) -> set[str]:
        names: set[str] = set()
        for state in ("pending", "done"):
            record = self._read(stem, state)
            if record is not None:
                names.update(record["files"])
        return names

    def commit(self, stem: str, row: dict) -> list[Path]:
        """Move the staged files of ``stem`` into the output folder and record the item as done with ``row``.

        Raises:
            FileExistsError: a staged file's name is taken by a file this ledger did not write (and the ledger does
                not overwrite); nothing of the item is moved.
        """
        folder = self.root / "staging" / stem
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        ours = self._ours(stem)
        taken = [n for n in names if (self.output_dir / n).exists() and n not in ours]
        if taken and not self.overwrite:
            raise FileExistsError(
                f"{self.output_dir}: {', '.join(taken)}: exists and was not written by this tool; "
                "pass overwrite=True (--overwrite) to replace"
            )
        self._write(stem, "pending", {"files": sorted(set(names) | ours)})
        for name in names:
            os.replace(folder / name, self.output_dir / name)
        self._write(stem, "done", {"files": names, "row": row})
        self._record(stem, "pending").unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return [self.output_dir / n for n in names]

    def _write(self, stem: str, state: str, content: dict) -> None:
        atomic_write_text(self._record(stem, state), json.dumps(content, indent=1, default=_jsonable))

    def discard(self, stems: Iterable[str]) -> None:
        """Remove the staging folders of ``stems`` (their items failed; nothing was committed)."""
        for stem in stems:
            shutil.rmtree(self.root / "staging" / stem, ignore_errors=True)


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
