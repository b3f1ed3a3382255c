"""Volumes explained slice by slice with a 2D model: which inputs are volumes, and the slice items they become.

A volume is a 3D NIfTI file, a DICOM series (two or more single-frame instances of one SeriesInstanceUID found in an
input folder) or an enhanced multi-frame DICOM instance (Enhanced CT/MR/PET, Legacy Converted Enhanced: frames with
their own plane positions). :func:`collect_inputs` gives each volume one item (``{"image", "stem", "volume"}``: one
output stem, one ledger entry, one row of results); :func:`expand_volume` turns it into one item per slice for the 2D
pipeline. Every item, a 2D image's too, carries the same slice keys (:data:`SLICE_KEYS`, ``-1`` for a 2D image), so
that a batch may mix 2D images and slices.

The slice axis of a NIfTI volume is the acquisition axis by default: the header's ``slice_dim`` when it is set, else
the last axis (the axis along which NIfTI writers usually stack acquired slices); ``slice_axis`` overrides it. A DICOM
series is always cut into its instances, and a multi-frame instance into its frames, sorted along the slice normal
(:func:`medxgan_monai.io.series.read_dicom_series`, :func:`~medxgan_monai.io.series.read_dicom_multiframe`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DICOM_MULTIFRAME",
    "DICOM_SERIES",
    "NIFTI_VOLUME",
    "SLICE_KEYS",
    "acquisition_axis",
    "expand_volume",
    "nifti_volume_shape",
    "slice_keys",
]

#: item["volume"] of a 3D NIfTI file, a DICOM series and an enhanced multi-frame DICOM instance
NIFTI_VOLUME, DICOM_SERIES, DICOM_MULTIFRAME = "nifti", "dicom_series", "dicom_multiframe"
#: the keys every item carries: the slice's index, the volume's slice count, slice axis and source (the NIfTI file,
#: the series folder or the multi-frame file); -1, 0, -1 and "" for a 2D image. A slice whose "image" is its
#: "volume_source" is cut out of that file (NIfTI, multi-frame DICOM); a series' slice is its own file
SLICE_KEYS = ("slice", "slices", "slice_axis", "volume_source")


def slice_keys(index: int = -1, count: int = 0, axis: int = -1, source: str = "") -> dict:
    """The :data:`SLICE_KEYS` of an item: a slice's, or (no arguments) a 2D image's."""
    return {"slice": int(index), "slices": int(count), "slice_axis": int(axis), "volume_source": str(source)}


def nifti_volume_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The array shape of a NIfTI file with three axes longer than one, from its header alone; ``None`` for a 2D
    image (singleton axes ignored) or a file whose header cannot be read (the loader reports that problem)."""
    from medxgan_monai.transforms.io import _nifti_header

    try:
        shape = tuple(int(size) for size in _nifti_header(path).get_data_shape())
    except Exception:  # not readable here: screened, and reported, as any other input
        return None
    return shape if len([size for size in shape if size > 1]) == 3 and len(shape) == 3 else None


def acquisition_axis(path: str | os.PathLike) -> int:
    """The NIfTI volume's slice axis: the header's ``slice_dim`` when set, else the last axis."""
    from medxgan_monai.transforms.io import _nifti_header

    _, _, slice_dim = _nifti_header(path).get_dim_info()
    return 2 if slice_dim is None else int(slice_dim)


def expand_volume(item: dict, slice_axis: int | None = None) -> list[dict]:
    """One item per slice of the volume ``item`` (a 2D item comes back alone, unchanged).

    NIfTI: ``{"image": the file, "stem", "slice": k, "slices": n, "slice_axis": axis}`` for k along ``slice_axis``
    (default :func:`acquisition_axis`). DICOM series: ``"image"`` is slice k's file, in the order along the slice
    normal, and ``"slice_axis"`` is 2 (the instances are stacked as the last axis). Multi-frame DICOM: ``"image"``
    is the file and k counts the frames along the slice normal (the loader finds the frame), ``"slice_axis"`` 2.

    Raises:
        ImageReadError: the volume cannot be cut (an axis out of range, a series whose geometry is not a volume:
            :class:`~medxgan_monai.io.series.SeriesError` names the problem, also for a multi-frame instance whose
            frames are not parallel, evenly spaced slices).
    """
    from medxgan_monai.transforms.io import ImageReadError

    kind = item.get("volume")
    if kind == NIFTI_VOLUME:
        shape = nifti_volume_shape(item["image"])
        if shape is None:
            raise ImageReadError(item["image"], "is no longer a 3D NIfTI volume")
        axis = acquisition_axis(item["image"]) if slice_axis is None else int(slice_axis)
        if not 0 <= axis < 3:
            raise ImageReadError(item["image"], f"slice axis {axis} is not 0, 1 or 2")
        files = [item["image"]] * shape[axis]
    elif kind == DICOM_SERIES:
        from medxgan_monai.io.series import read_dicom_series

        axis = 2
        files = [str(path) for path in read_dicom_series(item["files"], origin=item["image"]).paths]
    elif kind == DICOM_MULTIFRAME:
        from medxgan_monai.io.series import read_dicom_multiframe

        axis = 2
        files = [item["image"]] * read_dicom_multiframe(item["image"]).shape[2]
    else:
        return [{**item, **slice_keys()}]
    base = {key: value for key, value in item.items() if key not in ("files", "volume")}
    volume = str(item["image"])
    return [{**base, "image": file, **slice_keys(i, len(files), axis, volume)} for i, file in enumerate(files)]


def series_items(files: Sequence[Path]) -> tuple[list[tuple[Path, list[str]]], list[Path]]:
    """The DICOM series among ``files`` (two or more single-frame instances of one SeriesInstanceUID), each as the
    folder holding its files and the files; and the files that are not part of one (2D images, other formats)."""
    from medxgan_monai.io.series import group_dicom_series

    groups, others = group_dicom_series(files)
    series, singles = [], list(others)
    for paths in groups.values():
        if len(paths) < 2:
            singles += paths
            continue
        folder = Path(os.path.commonpath([str(Path(path).parent) for path in paths]))
        series.append((folder, sorted(str(path) for path in paths)))
    return series, sorted(singles)


def volume_score(probabilities: Sequence[float]) -> float:
    """The volume-level probability: the maximum over its slices (a volume is positive when any slice is)."""
    return float(np.max(np.asarray(probabilities, dtype=np.float64)))
