"""Atomic file and folder output: a crash never leaves a half-written result, and nothing is overwritten silently."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_output", "atomic_replace_dir", "atomic_write_csv", "atomic_write_text"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; move it onto ``path`` only if the block succeeds.

    Example::

        with atomic_output("out/report.csv") as tmp:
            frame.to_csv(tmp)

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the suffix so that writers choosing a format by extension still work
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file private (0600); the result gets the permissions of any other new file
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_replace_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it replaces ``path`` only when the block succeeds.

    The old folder (when ``overwrite`` is True) is removed only after the new one is in place.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial.", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp makes the folder private (0700)
        previous = None
        if path.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, previous / path.name)
        os.replace(staging, path)
        if previous is not None:
            shutil.rmtree(previous)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_output`; returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_csv(
    path: str | os.PathLike, header: Sequence, rows: Iterable[Sequence], overwrite: bool = True, **fmtparams
) -> Path:
    """Write a CSV file (one header row, then ``rows``) through :func:`atomic_output`; returns the path.
    ``fmtparams`` go to :func:`csv.writer` (e.g. ``lineterminator="\\n"``)."""
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="") as stream:
        writer = csv.writer(stream, **fmtparams)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


class OutputNotWritable(OSError, ValueError):
    """The output folder cannot be created or written to (also a ``ValueError``: a usage problem, which the command
    line reports as a message with exit status 2)."""


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` if needed and check that a file can be created in it, so a run fails before any
    work rather than after it; returns the path.

    Raises:
        OutputNotWritable: naming the folder and the reason.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test."):
            pass
    except OSError as error:
        raise OutputNotWritable(f"{path}: output folder is not writable ({type(error).__name__}: {error})") from error
    return path
