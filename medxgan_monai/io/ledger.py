"""Per-item bookkeeping of a batch run's outputs, so an interrupted run resumes without redoing or losing work.

Each item's files are written into a private staging folder, then moved into the output folder under a *pending*
record that lists them, then the record becomes *done* (with the item's result row). A crash leaves either nothing of
the item in the output folder, or files named in a pending record, which a rerun may replace; a file the record does
not name (the user's own) is never replaced unless the run overwrites. The run-level files (``predictions.csv``,
``errors.csv``) are owned the same way: a rerun replaces them only when a manifest says this tool wrote them.

One run at a time per output folder: the ledger holds an OS lock (``fcntl.flock``) on ``.medxgan_ledger/run.lock``
from :meth:`OutputLedger.split` until :meth:`OutputLedger.release`; the OS drops it when the process ends, so a
crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from medxgan_monai.io.atomic import atomic_write_text

__all__ = [
    "LEDGER_DIR",
    "RUN_FILES",
    "OutputFolderBusy",
    "OutputFolderConflict",
    "OutputLedger",
    "check_item_name",
    "numbered_item_name",
    "safe_item_name",
]

LEDGER_DIR = ".medxgan_ledger"
#: files of the whole run (not of one item) that the ledger's manifest may own
RUN_FILES = ("predictions.csv", "errors.csv")
_MANIFEST = "run_files.json"
_LOCK = "run.lock"
#: longest item name; leaves room for the longest output suffix (``_residual_counterfactual.nii.gz``) and the
#: ledger's temporary names within the 255 bytes most file systems allow
MAX_ITEM_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_item_name(text: str) -> str:
    """``text`` made safe to name files and folders: runs of characters other than ASCII letters, digits, ``.``,
    ``_`` and ``-`` become ``_``; leading dots and dashes (hidden files, ``.``/``..``, option-like names) and trailing
    dots are removed; at most :data:`MAX_ITEM_NAME` characters; ``"image"`` when nothing is left.

    Example::

        safe_item_name("..")             # "image"
        safe_item_name("a/b c\\x00")      # "a_b_c_"
    """
    name = _UNSAFE.sub("_", text).lstrip(".-")[:MAX_ITEM_NAME].rstrip(".")
    return name or "image"


def numbered_item_name(name: str, index: int) -> str:
    """``<name>_<index>``, shortening ``name`` so that the result stays within :data:`MAX_ITEM_NAME`."""
    suffix = f"_{index}"
    return name[: MAX_ITEM_NAME - len(suffix)] + suffix


def check_item_name(name: str) -> str:
    """Return ``name`` if :func:`safe_item_name` leaves it unchanged; otherwise raise ``ValueError``, so that no
    item name can reach outside the ledger's own folders (``..``, a separator, a control character)."""
    if not isinstance(name, str) or safe_item_name(name) != name:
        raise ValueError(f"{name!r}: not a safe output name (use medxgan_monai.io.ledger.safe_item_name)")
    return name


class OutputFolderBusy(ValueError):
    """Another run holds the output folder's lock (a ``ValueError``: the command line ends with exit status 2)."""


class OutputFolderConflict(ValueError):
    """A file this tool would write exists in the output folder and was not written by it."""


class _FolderLock:
    """An exclusive ``fcntl.flock`` on one file, with the holder (pid, host, start) written into it."""

    # lock files held in this process -> (lock, thread that took it), to recognise a run of this thread that ended
    # without releasing (an exception): a thread runs one run at a time, so such a lock is stale and is taken over.
    # Weak references: a lock whose ledger is gone is closed, and so released, by the garbage collector.
    _held: dict[str, tuple[weakref.ref, threading.Thread]] = {}
    _held_guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream = None

    @property
    def held(self) -> bool:
        return self._stream is not None

    def acquire(self, folder: Path, wait_seconds: float = 0.0) -> None:
        if self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        deadline = time.monotonic() + wait_seconds
        while True:
            self._take_over_stale(key)
            stream = open(self.path, "a+")  # kept open while the lock is held: closing it releases the lock
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                stream.seek(0)
                holder = stream.read().strip() or "a process that has not yet recorded itself"
                stream.close()
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_seconds:g} s" if wait_seconds > 0 else ""
                    raise OutputFolderBusy(
                        f"{folder}: output folder is in use by another run ({holder}){waited}; wait for it to "
                        "finish or choose another output folder"
                    ) from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
                continue
            break
        stream.seek(0)
        stream.truncate()
        stream.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        stream.flush()
        self._stream = stream
        with self._held_guard:
            self._held[key] = (weakref.ref(self), threading.current_thread())

    def _take_over_stale(self, key: str) -> None:
        with self._held_guard:
            holder = self._held.get(key)
        if holder is None:
            return
        lock, thread = holder[0](), holder[1]
        if lock is not None and lock is not self and (thread is threading.current_thread() or not thread.is_alive()):
            lock.release()

    def release(self) -> None:
        if self._stream is None:
            return
        with self._held_guard:
            key = str(self.path.resolve())
            holder = self._held.get(key)
            if holder is not None and holder[0]() is self:
                del self._held[key]
        self._stream.seek(0)
        self._stream.truncate()
        self._stream.close()  # closing the descriptor drops the flock
        self._stream = None


class OutputLedger:
    """Which items of a batch run in ``output_dir`` are complete; stage and commit each item's outputs atomically.

    Args:
        output_dir: the run's output folder (the ledger lives in its ``.medxgan_ledger`` subfolder).
        overwrite: redo complete items and replace existing files (``--overwrite``).
        wait_seconds: how long :meth:`split` waits for another run in the same folder to finish before refusing
            with :class:`OutputFolderBusy` (0: refuse at once).
        on_commit: called with an item's stem and its committed files right after :meth:`commit`, so that a service
            (the DICOM node) can hand them on while the run goes on.

    Item names (stems) must be safe names (:func:`check_item_name`); a ``ValueError`` is raised otherwise.

    Example::

        ledger = OutputLedger("out/")
        todo, done_rows = ledger.split(items)            # locks the folder; complete items are skipped
        folder = ledger.staging("case_001")              # write the item's files here, then
        ledger.commit("case_001", {"probability": 0.93}) # move them into out/ and record the item as done
        ledger.release()                                 # the run is over (the OS also releases at exit)
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        wait_seconds: float = 0.0,
        on_commit: Callable[[str, list[Path]], None] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.on_commit = on_commit
        self.overwrite = overwrite
        self.wait_seconds = wait_seconds
        self.root = self.output_dir / LEDGER_DIR
        self._lock = _FolderLock(self.root / _LOCK)

    # one run at a time

    def lock(self) -> None:
        """Take the output folder's lock (no-op when held).

        Raises:
            OutputFolderBusy: another run holds it (after ``wait_seconds``), naming the folder and the holder.
        """
        self._lock.acquire(self.output_dir, self.wait_seconds)

    def release(self) -> None:
        """Let another run use the output folder."""
        self._lock.release()

    # per-item records

    def _record(self, stem: str, state: str) -> Path:
        return self.root / f"{check_item_name(stem)}.{state}.json"

    def _staging_folder(self, stem: str) -> Path:
        return self.root / "staging" / check_item_name(stem)

    def _read(self, stem: str, state: str) -> dict | None:
        path = self._record(stem, state)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def completed(self, stem: str) -> dict | None:
        """The done record of ``stem`` (``{"files": [...], "row": {...}}``) if every file it lists still exists;
        ``None`` also for a name that is not a safe item name (no record can have it)."""
        if safe_item_name(stem) != stem:
            return None
        record = self._read(stem, "done")
        if record is None or not all((self.output_dir / name).is_file() for name in record["files"]):
            return None
        return record

    def split(
        self, items: Sequence[dict], stem_key: str = "stem", source_key: str = "image"
    ) -> tuple[list[dict], list[dict]]:
        """Start a run: lock the folder, claim the existing run files (refused when they are not ours and the ledger
        does not overwrite), then return the items still to do and the result rows of those already complete (all of
        them to do when overwriting).

        An item whose stem names the finished result of another source (``source_key``; an earlier run on other
        files of the same name) gets the first ``<stem>_<k>`` that no item plans and no other source's result has,
        so that result is neither taken for this item's nor replaced.

        Raises:
            OutputFolderBusy: another run uses the folder.
            OutputFolderConflict: a run file (e.g. ``predictions.csv``) exists and was not written by this tool.
        """
        self.lock()
        try:
            for name in RUN_FILES:
                if (self.output_dir / name).exists():
                    self.claim_run_file(name)
        except BaseException:
            self.release()  # the run does not start
            raise
        items = self._apart_from_other_sources(items, stem_key, source_key)
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

    def _source_of(self, stem: str) -> str | None:
        record = self._read(stem, "done")
        return None if record is None else record.get("row", {}).get("source")

    def _apart_from_other_sources(self, items: Sequence[dict], stem_key: str, source_key: str) -> list[dict]:
        planned = {item[stem_key].casefold() for item in items}
        result = []
        for item in items:
            stem, source = item[stem_key], item.get(source_key)
            if source is None or self._source_of(stem) in (None, str(source)):
                result.append(item)
                continue
            index = 2
            while self._name_taken(numbered_item_name(stem, index), str(source), planned):
                index += 1
            renamed = numbered_item_name(stem, index)
            planned.add(renamed.casefold())
            result.append({**item, stem_key: renamed})
        return result

    def _name_taken(self, stem: str, source: str, planned: set[str]) -> bool:
        """``stem`` is planned for an item of this run, or holds the finished result of a source other than
        ``source``."""
        return stem.casefold() in planned or self._source_of(stem) not in (None, source)

    def staging(self, stem: str) -> Path:
        """An empty private folder for ``stem``'s outputs (a leftover of an interrupted run is discarded)."""
        self.lock()
        folder = self._staging_folder(stem)
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
        self.lock()
        folder = self._staging_folder(stem)
        # hidden names are writers' temporary files (atomic_output), never outputs
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
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
        committed = [self.output_dir / n for n in names]
        if self.on_commit is not None:
            self.on_commit(stem, committed)
        return committed

    def _write(self, stem: str, state: str, content: dict) -> None:
        atomic_write_text(self._record(stem, state), json.dumps(content, indent=1, default=_jsonable))

    def discard(self, stems: Iterable[str]) -> None:
        """Remove the staging folders of ``stems`` (their items failed; nothing was committed)."""
        for stem in stems:
            shutil.rmtree(self._staging_folder(stem), ignore_errors=True)

    # run-level files

    def _manifest(self) -> set[str] | None:
        try:
            return set(json.loads((self.root / _MANIFEST).read_text()))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError):
            return set()

    def owns_run_file(self, name: str) -> bool:
        """Whether ``name`` (one of :data:`RUN_FILES`) may be replaced: absent, or written by this tool. A ledger
        of a version without the manifest is taken as proof that the run files there are ours."""
        if not (self.output_dir / name).exists():
            return True
        manifest = self._manifest()
        if manifest is None:
            return any(self.root.glob("*.done.json"))
        return name in manifest

    def check_run_file(self, name: str) -> None:
        """Raise :class:`OutputFolderConflict` when ``name`` exists, is not ours, and the ledger does not overwrite."""
        if not self.overwrite and not self.owns_run_file(name):
            raise OutputFolderConflict(
                f"{self.output_dir / name}: exists and was not written by this tool; move it away, choose another "
                "output folder, or pass --overwrite to replace it"
            )

    def claim_run_file(self, name: str) -> Path:
        """Record ``name`` as written by this tool (before writing it) and return its path.

        Raises:
            OutputFolderConflict: see :meth:`check_run_file`.
        """
        self.check_run_file(name)
        manifest = self._manifest() or set()
        if name not in manifest:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.root / _MANIFEST, json.dumps(sorted(manifest | {name})))
        return self.output_dir / name

    def remove_run_file(self, name: str) -> None:
        """Remove ``name`` if this tool wrote it (a stale ``errors.csv`` after a clean rerun); a user's file stays."""
        path = self.output_dir / name
        if not path.exists() or not self.owns_run_file(name):
            return
        path.unlink()
        manifest = self._manifest()
        if manifest is not None and name in manifest:
            # a file of that name made later by someone else is theirs
            atomic_write_text(self.root / _MANIFEST, json.dumps(sorted(manifest - {name})))


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
