"""Inference inputs: files, folders or datalists turned into items, and screened so one bad scan stops nothing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medxgan_monai.data.datalist import load_datalist
from medxgan_monai.data.volumes import (
    DICOM_MULTIFRAME,
    DICOM_SERIES,
    NIFTI_VOLUME,
    expand_volume,
    nifti_volume_shape,
    series_items,
    slice_keys,
)
from medxgan_monai.io.ledger import LEDGER_DIR, numbered_item_name, safe_item_name
from medxgan_monai.io.nifti import output_geometry
from medxgan_monai.io.series import SeriesError, dicom_frame_count
from medxgan_monai.transforms.io import BITMAP_SUFFIXES, NIFTI_SUFFIXES, ImageReadError

__all__ = [
    "InputProblem",
    "NoImagesFound",
    "collect_evaluation_items",
    "collect_inputs",
    "output_stem",
    "screen_inputs",
]

logger = logging.getLogger(__name__)

NON_IMAGE_SUFFIXES = (".json", ".csv", ".txt", ".md", ".py", ".log", ".xml", ".html", ".yaml", ".yml", ".gif")


@dataclass(frozen=True)
class InputProblem:
    """One input that could not be explained: its stem, its file and what was wrong."""

    stem: str
    path: str
    problem: str


class NoImagesFound(ValueError):
    """An input folder (or datalist section) holds no image to explain (a usage error: exit status 2)."""


def output_stem(path: Path) -> str:
    """The file name without its image suffix (``case.nii.gz`` -> ``case``), made a safe file name
    (:func:`~medxgan_monai.io.ledger.safe_item_name`: no separator, no ``..``, no leading dot), used to name outputs."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, ".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_item_name(name)


def _files_in(folder: Path) -> list[Path]:
    """The candidate images under ``folder``: hidden files and folders are skipped, and so is every folder that
    holds an output ledger (this tool's output folder), so a run never explains its own outputs."""
    files = []
    for parent, folders, names in os.walk(folder):
        if Path(parent, LEDGER_DIR).exists():
            folders.clear()
            continue
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in names:
            path = Path(parent, name)
            if not name.startswith(".") and not name.lower().endswith(NON_IMAGE_SUFFIXES) and path.is_file():
                files.append(path)
    # the order of earlier versions (which input of a repeated name gets "_2" must not change between runs)
    return sorted(files)


def collect_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike], section: str = "test", series: bool = True
) -> list[dict]:
    """Items ``{"image": absolute path, "stem": unique output name}`` from files, folders and datalists.

    Args:
        inputs: one or more of: an image file (NIfTI, DICOM, PNG/JPEG); a folder, searched recursively (files with
            non-image suffixes such as .json or .csv are skipped); a datalist JSON (its ``section``, or its only
            section, or a top-level list of items or paths).
        section: the datalist section to explain.
        series: in folders (an input folder, or a folder named by a datalist), the single-frame DICOM instances of
            one SeriesInstanceUID, two or more, are one volume (``False``: each instance is a 2D image).

    A 3D NIfTI file, a DICOM series in a folder, and a multi-frame DICOM instance, is one item ``{"image", "stem",
    "volume"}`` (``"volume"``: ``"nifti"``, ``"dicom_series"`` or ``"dicom_multiframe"``; a series also has
    ``"files"``, and ``"image"`` is the folder holding them),
    explained slice by slice (:func:`~medxgan_monai.data.volumes.expand_volume`); its stem is the file's or the
    folder's name.

    Stems are safe file names, unique within the run (compared ignoring case, for case-insensitive file systems):
    a repeated name gets ``_2``, ``_3``, ..., skipping every name another input has, so no output overwrites another.
    Folders holding an output ledger (this tool's output folders) and hidden files and folders are not searched.

    Raises:
        FileNotFoundError: an input path does not exist (a missing file inside a datalist is reported later, per
            item, by :func:`screen_inputs`).
        NoImagesFound: an input folder holds no candidate image file.

    Example::

        items = collect_inputs(["scans/", "extra/case.dcm"])
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items: list[dict] = []
    for entry in inputs:
        path = Path(entry).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: input does not exist")
        if path.is_dir():
            items += _folder_items(path, series)
        elif path.name.lower().endswith(".json"):
            for listed in _datalist_paths(path, section):
                is_folder = Path(listed).is_dir()
                items += _folder_items(Path(listed), series) if is_folder else [_file_item(listed)]
        else:
            items.append(_file_item(str(path.resolve())))
    if not items:
        raise NoImagesFound(f"{', '.join(str(entry) for entry in inputs)}: no images to explain")
    stems = _unique_stems([item["image"] for item in items])
    return [{**item, "stem": stem} for item, stem in zip(items, stems, strict=True)]


def _file_item(path: str) -> dict:
    """A file's item: a 3D NIfTI file and a multi-frame DICOM instance are volumes."""
    name = path.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return {"image": path, "volume": NIFTI_VOLUME} if nifti_volume_shape(path) is not None else {"image": path}
    if not name.endswith(BITMAP_SUFFIXES) and dicom_frame_count(path) > 1:
        return {"image": path, "volume": DICOM_MULTIFRAME}
    return {"image": path}


def _folder_items(folder: Path, series: bool) -> list[dict]:
    found = _files_in(folder)
    if not found:
        raise NoImagesFound(
            f"{folder}: input folder holds no image files (hidden files, files such as .json or .csv, "
            f"and output folders of this tool are not searched)"
        )
    if not series:
        return [_file_item(str(p.resolve())) for p in found]
    volumes, others = series_items([p.resolve() for p in found])
    items = [{"image": str(where), "volume": DICOM_SERIES, "files": files} for where, files in volumes]
    return items + [_file_item(str(p)) for p in others]


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """One output name per path: the first path with a name keeps it; a repeat gets the first ``<name>_<k>`` (k = 2,
    3, ...) that no path has as its own name and no earlier path took (ignoring case), so ``case.nii``,
    ``case.nii.gz`` and ``case_2.nii.gz`` become ``case``, ``case_3`` and ``case_2``."""
    natural = [output_stem(Path(path)) for path in paths]
    taken = {stem.casefold() for stem in natural}
    first_of: set[str] = set()
    stems = []
    for stem in natural:
        if stem.casefold() not in first_of:
            first_of.add(stem.casefold())
            stems.append(stem)
            continue
        index = 2
        while numbered_item_name(stem, index).casefold() in taken:
            index += 1
        stems.append(numbered_item_name(stem, index))
        taken.add(stems[-1].casefold())
    return stems


def collect_evaluation_items(
    datalist: str | os.PathLike, section: str = "test", labels: Sequence[int] = (1,)
) -> tuple[list[dict], list[InputProblem]]:
    """The entries of a datalist section on which explanations are scored against masks.

    Returns items ``{"image", "mask", "label", "stem", "source"}`` (absolute paths; ``source`` keeps the image path
    once the image is loaded) for the entries whose label is in ``labels`` (the positives by default: the class
    whose evidence is explained), and one :class:`InputProblem` per such entry that is skipped: one without a
    ``"mask"``, and a volume whose mask is not in its grid. A structurally broken datalist raises
    :class:`~medxgan_monai.data.DatalistError` listing every problem.

    A volume entry is a 3D NIfTI image, a folder holding one DICOM series or an enhanced multi-frame DICOM; its item
    also has ``"volume"`` (``"nifti"``, ``"dicom_series"`` or ``"dicom_multiframe"``, and a series its ``"files"``),
    as :func:`collect_inputs` gives, so that :func:`screen_inputs` cuts it into slices. Its ``"mask"`` must be a 3D
    NIfTI in the volume's own grid: the shape and affine of the NIfTI volume, or for a DICOM volume the (columns,
    rows, slices) shape and the affine of :func:`~medxgan_monai.io.series.read_dicom_series` (or
    ``read_dicom_multiframe``), within :data:`MASK_AFFINE_TOLERANCE_MM`, since its scores are computed on the maps
    in that grid.

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
        try:
            volume = _evaluation_volume(item["image"])
            problem = _mask_grid_problem(item["image"], item["mask"], volume) if volume else None
        except (ImageReadError, SeriesError, NoImagesFound) as error:
            problem = str(error) if isinstance(error, NoImagesFound) else _describe(error)
        if problem:
            problems.append(InputProblem(stem, item["image"], problem))
            continue
        items.append({**item, **volume, "stem": stem, "source": item["image"]})
    return items, problems


#: how far (mm, per affine entry) a volume's mask affine may be from the volume's: float32 storage of the same grid
MASK_AFFINE_TOLERANCE_MM = 1e-3


def _evaluation_volume(image: str) -> dict:
    """The volume keys of an evaluation entry's image: ``{}`` for a 2D image, ``{"volume": "nifti"}`` for a 3D
    NIfTI, ``{"volume": "dicom_series", "files": [...]}`` for a folder holding one DICOM series and nothing else.

    Raises:
        ImageReadError: a folder that does not hold exactly one series.
        NoImagesFound: a folder without image files.
    """
    path = Path(image)
    if not path.is_dir():
        return {key: value for key, value in _file_item(image).items() if key != "image"}
    found = _folder_items(path, series=True)
    series = [item for item in found if item.get("volume") == DICOM_SERIES]
    if len(series) != 1 or len(found) != 1:
        raise ImageReadError(
            image,
            f"a volume's folder must hold one DICOM series (two or more instances of one SeriesInstanceUID) and "
            f"no other image; found {len(series)} series and {len(found) - len(series)} other image(s)",
        )
    return {"volume": DICOM_SERIES, "files": series[0]["files"]}


def _mask_grid_problem(image: str, mask: str, volume: dict) -> str | None:
    """Why ``mask`` is not in the grid of the volume ``image`` (shape and affine, read from headers), or ``None``."""
    import nibabel as nib

    from medxgan_monai.io.series import read_dicom_multiframe, read_dicom_series

    if volume["volume"] in (DICOM_SERIES, DICOM_MULTIFRAME):
        if volume["volume"] == DICOM_SERIES:
            series = read_dicom_series(volume["files"], origin=image)
        else:
            series = read_dicom_multiframe(image)
        shape, affine = tuple(series.shape), np.asarray(series.affine)
    else:
        header = nib.load(image)
        shape, affine = tuple(header.shape), np.asarray(header.affine)
    try:
        mask_header = nib.load(mask)
    except Exception as error:  # nibabel raises many types; the user needs the file and the reason
        return f"mask {mask}: cannot read as a NIfTI volume ({type(error).__name__})"
    if tuple(mask_header.shape) != shape:
        return f"mask {mask}: shape {tuple(mask_header.shape)} is not the volume's grid {shape}"
    distance = float(np.abs(np.asarray(mask_header.affine) - affine).max())
    if not distance <= MASK_AFFINE_TOLERANCE_MM:
        return (
            f"mask {mask}: its affine differs from the volume's by up to {distance:.3g} mm "
            f"(tolerance {MASK_AFFINE_TOLERANCE_MM:g} mm): not the volume's grid"
        )
    return None


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
    slice_axis: int | None = None,
    spatial_dims: int = 2,
) -> tuple[list[dict], list[InputProblem]]:
    """Run each item through ``preprocessing`` once and keep those that give a usable image; for a 2D model
    (``spatial_dims`` 2) a volume is cut into its slices (:func:`~medxgan_monai.data.volumes.expand_volume`, along
    ``slice_axis``), each screened alike; for a 3D model it stays one item, loaded whole (a 2D image is then rejected
    by the loader: a 3D model explains volumes only).

    An item is rejected, with the reason, when it cannot be read (missing, unreadable, unsupported, wrong number of
    dimensions or channels: the loader's :class:`~medxgan_monai.transforms.ImageReadError`), when its source is
    smaller than ``min_size`` pixels along an in-plane axis (a 1 x 10000 image too), when its affine (the geometry
    the outputs are written in) is not finite, or when the preprocessed image is constant or not finite. A volume is
    rejected as a whole when its geometry is not a volume's (a DICOM series with a missing slice, for one) or when
    one of its slices cannot be read; a constant slice (the air above a head) is kept.

    Returns:
        the good items (volumes as their slices), and one :class:`InputProblem` per rejected item or volume (also
        logged as a warning).
    """
    good, problems = [], []
    for item in items:
        source = item[image_key]
        try:
            sliced = spatial_dims == 2
            slices = expand_volume(item, slice_axis) if sliced else [{**item, **slice_keys()}]
            for piece in slices:
                image = preprocessing(dict(piece))[image_key]
                # a constant slice (the air above a head) is part of a volume; a constant volume has nothing to show
                _check_usable(image, piece[image_key], min_size, constant_allowed=sliced and "volume" in item)
        except Exception as error:  # any failure of one input must not stop the batch
            problem = _describe(error)
            problems.append(InputProblem(item.get("stem", Path(source).name), source, problem))
            logger.warning("skipping %s: %s", source, problem)
            continue
        good += slices
    return good, problems


def _describe(error: BaseException) -> str:
    """The most specific message in an exception chain (MONAI wraps transform errors in a generic RuntimeError)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for cause in chain:
        if isinstance(cause, (ImageReadError, SeriesError)):
            return cause.problem
    root = chain[-1]
    return f"{type(root).__name__}: {root}"


def _check_usable(image, path: str, min_size: int, constant_allowed: bool = False) -> None:
    meta = getattr(image, "meta", {})
    source_shape = [int(s) for s in meta.get("spatial_shape", image.shape[1:])]
    # only the trailing singleton axes beyond the image's own (a slice stored as (H, W, 1)) were dropped by the
    # loader; a 1-pixel-wide image keeps its unit axis and is rejected
    while len(source_shape) > image.ndim - 1 and source_shape[-1] == 1:
        source_shape.pop()
    # a volume loaded whole may have few slices (thick-slice MR): the size limit is on its slices' planes
    in_plane = source_shape[:2] if len(source_shape) == 3 else source_shape
    if min(in_plane, default=0) < min_size:
        raise ImageReadError(path, f"image of size {tuple(source_shape)} is below {min_size} pixels along an axis")
    if len(source_shape) == 3 and source_shape[2] < 2:
        raise ImageReadError(path, f"volume of size {tuple(source_shape)} has one slice")
    # the geometry the outputs will be written in, checked now rather than after the image was explained
    affine, _ = output_geometry(meta)
    if not np.isfinite(affine).all():
        raise ImageReadError(path, "the image's affine (voxel-to-world geometry) has NaN or infinite entries")
    tensor = torch.as_tensor(image)
    if not torch.isfinite(tensor).all():
        raise ImageReadError(path, "preprocessing produced NaN or infinite values")
    if tensor.max() - tensor.min() <= 1e-8 and not constant_allowed:
        raise ImageReadError(path, "image is constant; nothing to explain")
