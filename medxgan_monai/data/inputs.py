"""Inference inputs: files, folders or datalists turned into items, and screened so one bad scan stops nothing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medxgan_monai.data.datalist import load_datalist
from medxgan_monai.transforms.io import NIFTI_SUFFIXES, ImageReadError

__all__ = ["InputProblem", "collect_evaluation_items", "collect_inputs", "output_stem", "screen_inputs"]

logger = logging.getLogger(__name__)

NON_IMAGE_SUFFIXES = (".json", ".csv", ".txt", ".md", ".py", ".log", ".xml", ".html", ".yaml", ".yml", ".gif")


@dataclass(frozen=True)
class InputProblem:
    """One input that could not be explained: its stem, its file and what was wrong."""

    stem: str
    path: str
    problem: str


def output_stem(path: Path) -> str:
    """The file name without its image suffix (``case.nii.gz`` -> ``case``), used to name outputs."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, ".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _files_in(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and not path.name.lower().endswith(NON_IMAGE_SUFFIXES):
            files.append(path)
    return files


def collect_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], section: str = "test") -> list[dict]:
    """Items ``{"image": absolute path, "stem": unique output name}`` from files, folders and datalists.

    Args:
        inputs: one or more of: an image file (NIfTI, DICOM, PNG/JPEG); a folder, searched recursively (files with
            non-image suffixes such as .json or .csv are skipped); a datalist JSON (its ``section``, or its only
            section, or a top-level list of items or paths).
        section: the datalist section to explain.

    Stems are unique: a repeated file name gets ``_2``, ``_3``, ... so no output overwrites another.

    Raises:
        FileNotFoundError: an input path does not exist (a missing file inside a datalist is reported later, per
            item, by :func:`screen_inputs`).

    Example::

        items = collect_inputs(["scans/", "extra/case.dcm"])
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[str] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: input does not exist")
        if path.is_dir():
            paths += [str(p.resolve()) for p in _files_in(path)]
        elif path.name.lower().endswith(".json"):
            paths += _datalist_paths(path, section)
        else:
            paths.append(str(path.resolve()))
    return [{"image": path, "stem": stem} for path, stem in zip(paths, _unique_stems(paths), strict=True)]


def _unique_stems(paths: Sequence[str]) -> list[str]:
    stems, seen = [], {}
    for path in paths:
        stem = output_stem(Path(path))
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def collect_evaluation_items(
    datalist: str | os.PathLike, section: str = "test", labels: Sequence[int] = (1,)
) -> tuple[list[dict], list[InputProblem]]:
    """The entries of a datalist section on which explanations are scored against masks.

    Returns items ``{"image", "mask", "label", "stem", "source"}`` (absolute paths; ``source`` keeps the image path
    once the image is loaded) for the entries whose label is in ``labels`` (the positives by default: the class
    whose evidence is explained), and one :class:`InputProblem` per such entry without a ``"mask"``, which is
    skipped. A structurally broken datalist raises :class:`~medxgan_monai.data.DatalistError` listing every problem.

    Example::

        items, problems = collect_evaluation_items("data/demo/datalist.json", "test")
    """
    entries = [item for item in load_datalist(datalist, section) if item["label"] in labels]
    stems = _unique_stems([item["image"] for item in entries])
    items, problems = [], []
    for item, stem in zip(entries, stems, strict=True):
        if not item.get("mask"):
            problems.append(InputProblem(stem, item["image"], "no 'mask' in the datalist entry; cannot score"))
            continue
        items.append({**item, "stem": stem, "source": item["image"]})
    return items, problems


def _datalist_paths(path: Path, section: str) -> list[str]:
    content = json.loads(path.read_text())
    if isinstance(content, list):
        return [str((path.parent / (i["image"] if isinstance(i, dict) else i)).resolve()) for i in content]
    if section not in content:
        sections = [key for key, value in content.items() if isinstance(value, list)]
        if len(sections) != 1:
            raise ValueError(f"{path}: no section '{section}' and not exactly one list section (found {sections})")
        section = sections[0]
    return [item["image"] for item in load_datalist(path, section)]


def screen_inputs(
    items: Sequence[dict],
    preprocessing: Callable[[dict], dict],
    min_size: int = 8,
    image_key: str = "image",
) -> tuple[list[dict], list[InputProblem]]:
    """Run each item through ``preprocessing`` once and keep those that give a usable image.

    An item is rejected, with the reason, when it cannot be read (missing, unreadable, unsupported, wrong number of
    dimensions or channels: the loader's :class:`~medxgan_monai.transforms.ImageReadError`), when its source is
    smaller than ``min_size`` pixels along an axis, or when the preprocessed image is constant or not finite.

    Returns:
        the good items, and one :class:`InputProblem` per rejected item (also logged as a warning).
    """
    good, problems = [], []
    for item in items:
        try:
            image = preprocessing(dict(item))[image_key]
            _check_usable(image, item[image_key], min_size)
        except Exception as error:  # any failure of one input must not stop the batch
            problem = _describe(error)
            problems.append(InputProblem(item.get("stem", Path(item[image_key]).name), item[image_key], problem))
            logger.warning("skipping %s: %s", item[image_key], problem)
            continue
        good.append(item)
    return good, problems


def _describe(error: BaseException) -> str:
    """The most specific message in an exception chain (MONAI wraps transform errors in a generic RuntimeError)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for cause in chain:
        if isinstance(cause, ImageReadError):
            return cause.problem
    root = chain[-1]
    return f"{type(root).__name__}: {root}"


def _check_usable(image, path: str, min_size: int) -> None:
    source_shape = image.meta.get("spatial_shape", image.shape[1:]) if hasattr(image, "meta") else image.shape[1:]
    # singleton axes (a slice stored as (H, W, 1)) were dropped by the loader and do not count
    source_shape = tuple(int(s) for s in source_shape if int(s) != 1)
    if min(source_shape, default=0) < min_size:
        raise ImageReadError(path, f"image of size {source_shape} is below {min_size} pixels")
    tensor = torch.as_tensor(image)
    if not torch.isfinite(tensor).all():
        raise ImageReadError(path, "preprocessing produced NaN or infinite values")
    if tensor.max() - tensor.min() <= 1e-8:
        raise ImageReadError(path, "image is constant; nothing to explain")
