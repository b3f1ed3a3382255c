"""Datalists in MONAI's decathlon style: ``{"training": [...], "validation": [...], "test": [...]}``.

Each item is ``{"image": path, "label": 0 or 1}`` with an optional ``"mask": path`` (ground-truth lesion mask used for
evaluating explanations). Relative paths are resolved against the datalist file's folder. Entries are read here, at
run time, as plain JSON: a bundle config receives them as Python values and never parses them as config syntax, so an
entry such as ``"$HOME_scan.nii.gz"`` is that file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatalistError", "load_datalist", "validate_datalist"]

PATH_KEYS = ("image", "mask")


class DatalistError(ValueError):
    """A datalist has problems; ``problems`` lists every one of them, each naming the file or entry."""

    def __init__(self, datalist: str | os.PathLike, problems: Sequence[str]) -> None:
        self.datalist = str(datalist)
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.datalist}: {len(self.problems)} problem(s) found:\n{listed}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatalistError(path, ["datalist file does not exist"])
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatalistError(path, [f"not valid JSON: {error}"]) from error
    if not isinstance(content, dict):
        raise DatalistError(path, [f"expected a JSON object with split names as keys, got {type(content).__name__}"])
    return content


def _parse_section(path: Path, content: dict, section: str, require_mask: bool) -> tuple[list[dict], list[str]]:
    """Items of ``section`` with absolute paths (those that have an image path), and the structural problems."""
    if section not in content:
        return [], [f"has no '{section}' section (found: {sorted(content)})"]
    items = content[section]
    if not isinstance(items, list):
        return [], [f"section '{section}' must be a list, got {type(items).__name__}"]
    problems, resolved = [], []
    for index, item in enumerate(items):
        where = f"{section}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object with 'image' and 'label', got {type(item).__name__}")
            continue
        if not isinstance(item.get("image"), str) or not item["image"]:
            problems.append(f"{where}: missing 'image' path")
            continue
        if "label" not in item:
            problems.append(f"{where} ({item['image']}): missing 'label'")
        elif item["label"] not in (0, 1) or isinstance(item["label"], bool):
            problems.append(f"{where} ({item['image']}): label must be 0 or 1, got {item['label']!r}")
        if require_mask and not item.get("mask"):
            problems.append(f"{where} ({item['image']}): missing 'mask'")
        entry = dict(item)
        for key in PATH_KEYS:
            if isinstance(entry.get(key), str):
                entry[key] = str((path.parent / entry[key]).resolve())
        resolved.append(entry)
    return resolved, problems


def load_datalist(path: str | os.PathLike, section: str, require_mask: bool = False) -> list[dict]:
    """Return the items of ``section`` with absolute paths; structural problems raise :class:`DatalistError`.

    Example::

        train_items = load_datalist("data/demo/datalist.json", "training")
    """
    path = Path(path).resolve()
    items, problems = _parse_section(path, _read_json(path), section, require_mask)
    if problems:
        raise DatalistError(path, problems)
    return items


def validate_datalist(
    path: str | os.PathLike,
    sections: Sequence[str] = ("training", "validation"),
    check_readable: bool = True,
    require_mask: bool = False,
    spatial_dims: int | None = 2,
) -> dict[str, int]:
    """Check every entry of ``sections`` before anything starts; report all problems at once.

    Checks the structure (paths, labels 0/1), that each file exists, and with ``check_readable`` that it loads as a
    ``spatial_dims``-D image with finite values (:class:`~medxgan_monai.transforms.LoadScan`). Each section needs
    both classes.

    Returns:
        the number of items per section.

    Raises:
        DatalistError: listing every missing or unreadable entry.
    """
    from medxgan_monai.transforms.io import ImageReadError, LoadScan

    path = Path(path).resolve()
    content = _read_json(path)
    loader = LoadScan(spatial_dims=spatial_dims)
    problems: list[str] = []
    counts = {}
    for section in sections:
        items, section_problems = _parse_section(path, content, section, require_mask)
        problems.extend(section_problems)
        counts[section] = len(items)
        if not items:
            if not section_problems:
                problems.append(f"section '{section}' is empty")
            continue
        labels = {item.get("label") for item in items}
        if len(labels) == 1:
            problems.append(f"section '{section}' holds only label {labels.pop()!r}; a binary task needs both")
        for index, item in enumerate(items):
            for key in PATH_KEYS:
                if key not in item:
                    continue
                try:
                    if check_readable:
                        loader(item[key])  # also reports a missing file
                    elif not Path(item[key]).exists():
                        raise ImageReadError(item[key], "file does not exist")
                except ImageReadError as error:
                    problems.append(f"{section}[{index}] {key}: {error}")
    if problems:
        raise DatalistError(path, problems)
    return counts
