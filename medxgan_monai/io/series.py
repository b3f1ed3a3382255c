"""DICOM volumes: a series of single-frame instances (grouped by series, sorted along the slice normal) or one
enhanced multi-frame instance (its frames sorted the same way), their geometry checked, and the affine of the stacked
volume (headers only; each slice's pixels are loaded by the 2D loader).

The volume is laid out like the 2D loader's slices (:class:`~medxgan_monai.transforms.LoadScan`, MONAI's layout):
voxel ``(i, j, k)`` is pixel (column ``i``, row ``j``) of the ``k``-th slice along the normal, and the affine is RAS,
so slice ``k``'s own affine and the volume's agree on every pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medxgan_monai.io.dicom import _positive_spacing, messages_redacted, redact_identifying_values

__all__ = [
    "MAX_FRAMES",
    "ORIENTATION_TOLERANCE",
    "PIXEL_SPACING_TOLERANCE",
    "SLICE_STEP_TOLERANCE",
    "DicomSeries",
    "SeriesError",
    "dicom_frame_count",
    "frame_affines",
    "frame_functional_item",
    "group_dicom_series",
    "read_dicom_multiframe",
    "read_dicom_series",
]

#: most frames a multi-frame volume may have (a 2048-slice CT fits twice): each frame's geometry is checked in Python,
#: so a header claiming millions of tiny frames must not keep the loader busy for minutes
MAX_FRAMES = 4096
#: largest difference of any direction cosine between two slices of one series (about 0.006 degrees)
ORIENTATION_TOLERANCE = 1e-4
#: how far the row and column cosines may be from unit length and from orthogonal (their dot product)
_ORTHONORMAL_TOLERANCE = 1e-3
#: largest relative difference of PixelSpacing between two slices of one series
PIXEL_SPACING_TOLERANCE = 1e-4
#: as a fraction of the median step between consecutive slices (along the normal): two slices closer than this are
#: duplicates, and a step vector farther than this from the median step vector (a missing slice, a changing gantry
#: tilt) makes the spacing uneven
SLICE_STEP_TOLERANCE = 0.05
#: steps along the normal at or below this (mm) do not count towards the median step: they are duplicates whatever the
#: median; DICOM positions are decimal strings of up to 16 characters, far finer than any slice step
_SAME_POSITION_MM = 1e-3
#: the file names the 2D loader reads as DICOM without the Part 10 preamble (``transforms.io.DICOM_SUFFIXES``, not
#: imported: ``transforms`` imports ``io`` at module level, so ``io`` must not import ``transforms``)
_DICOM_SUFFIXES = (".dcm", ".dicom")
#: LPS (DICOM patient coordinates) to RAS (MONAI, NIfTI), as the 2D loader converts
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: file names quoted in one message at most
_NAMES_SHOWN = 3


class SeriesError(ValueError):
    """A DICOM series could not be read as one volume; the message names the folder (or the given origin) and the
    problem, with geometry, counts and file names only, never patient data.

    A ``ValueError`` with the ``path`` and ``problem`` attributes of
    :class:`~medxgan_monai.transforms.ImageReadError`, not a subclass of it: ``transforms`` imports ``io`` at module
    level, so ``io`` cannot import ``transforms``.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """One DICOM volume: a series of single-frame slices, or the frames of one enhanced multi-frame instance.

    Attributes:
        series_uid: SeriesInstanceUID shared by every slice.
        paths: each slice's file, sorted along the slice normal (row cosine x column cosine), the first lowest (for
            a multi-frame instance, its one file, once per slice).
        affine: 4x4 RAS affine (read-only) of the volume array laid out (columns, rows, slices): voxel ``(i, j, k)``
            is pixel (column ``i``, row ``j``) of slice ``k``. Its third column is the step between consecutive
            slice positions, which is not along the normal under a gantry tilt.
        shape: the volume's array shape, (Columns, Rows, number of slices).
        frames: for a multi-frame instance, the frame number (1-based, as DICOM counts) of each slice, in slice
            order; empty for a series of single-frame instances.
    """

    series_uid: str
    paths: tuple[Path, ...]
    affine: np.ndarray
    shape: tuple[int, int, int]
    frames: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class _Slice:
    """What the geometry checks need of one slice: an instance's header, or one frame of a multi-frame instance."""

    path: Path
    label: str  # how messages name it: the file, relative to the folder they name, or "frame <number>"
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient: row cosines, then column cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing), mm
    rows: int
    columns: int
    frame: int = 0  # the frame number in a multi-frame instance; 0 for a single-frame instance


def _read_header(path: Path, tags: Sequence[str] | None = None) -> Dataset | None:
    """The header (pixels not read; only ``tags`` when given), or ``None`` for a file pydicom cannot read as DICOM.
    Files without the Part 10 preamble are read only when their name says DICOM, as the 2D loader does."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except InvalidDicomError:
        if not path.name.lower().endswith(_DICOM_SUFFIXES):
            return None
    except Exception:  # a folder, an unreadable or truncated file: not ours to explain, the caller gets it back
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=tags)
    except Exception:
        return None


def _frames(header: Dataset) -> int:
    try:
        return int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def dicom_frame_count(path: str | os.PathLike) -> int:
    """NumberOfFrames of a DICOM image file (1 when it does not say), read from its header (only the few attributes
    needed: a multi-frame header's functional groups are not parsed here); 0 for a file that is not readable as DICOM
    or not an image with a SeriesInstanceUID."""
    header = _read_header(Path(path), ["NumberOfFrames", "SeriesInstanceUID", "Rows", "Columns"])
    return _frames(header) if header is not None and _series_uid(header) is not None else 0


def _series_uid(header: Dataset) -> str | None:
    """SeriesInstanceUID of an image instance (one with Rows and Columns), else ``None``."""
    try:
        uid = str(header.get("SeriesInstanceUID", "") or "").strip()
        is_image = "Rows" in header and "Columns" in header
    except Exception:  # a forced read of a file that is not DICOM after all
        return None
    return uid if uid and is_image else None


def group_dicom_series(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, list[Path]], list[Path]]:
    """Group the single-frame DICOM images among ``paths`` by SeriesInstanceUID, reading headers only.

    Args:
        paths: files, e.g. every file of a folder.

    Returns:
        ``(groups, others)``: ``groups`` maps each SeriesInstanceUID to its files, series in UID order and files in
        path order (both whatever the order of ``paths``); ``others`` are, in the order given, the paths that are not
        DICOM images of a series: not DICOM or not readable as DICOM, DICOM objects without pixels (structured
        reports, presentation states) or without a SeriesInstanceUID, and multi-frame instances (NumberOfFrames > 1),
        which are not slices of a stack.

    Example::

        groups, others = group_dicom_series(sorted(Path("study").iterdir()))
        volumes = [read_dicom_series(files, origin="study") for files in groups.values()]
    """
    groups: dict[str, list[Path]] = {}
    others: list[Path] = []
    for path in map(Path, paths):
        header = _read_header(path)
        uid = _series_uid(header) if header is not None else None
        if uid is None or _frames(header) > 1:
            others.append(path)
        else:
            groups.setdefault(uid, []).append(path)
    return {uid: sorted(groups[uid], key=str) for uid in sorted(groups)}, others


def _folder_of(paths: Sequence[Path]) -> Path:
    parents = {path.parent for path in paths}
    if len(parents) == 1:
        return parents.pop()
    try:
        return Path(os.path.commonpath([str(parent) for parent in parents]))
    except ValueError:  # absolute and relative paths mixed
        return paths[0].parent


def _label(path: Path, folder: Path) -> str:
    """The file as messages name it: relative to the folder named at the start of the message when inside it."""
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _names(paths: Sequence[Path], folder: Path) -> str:
    return _shown([_label(path, folder) for path in paths])


def _shown(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:_NAMES_SHOWN])
    more = len(labels) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _slice_names(slices: Sequence[_Slice]) -> str:
    return _shown([s.label for s in slices])


def _numbers(value, count: int) -> np.ndarray | None:
    """``count`` finite floats from a multi-valued attribute, or ``None``."""
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _slice(path: Path, header: Dataset, folder: Path) -> _Slice:
    # pydicom warns, quoting the value, about values it cannot convert: redacted like every message of ours
    with messages_redacted(header):
        return _Slice(
            path=path,
            label=_label(path, folder),
            position=_numbers(header.get("ImagePositionPatient"), 3),
            orientation=_numbers(header.get("ImageOrientationPatient"), 6),
            pixel_spacing=_positive_spacing(header.get("PixelSpacing")),
            rows=int(header.get("Rows", 0) or 0),
            columns=int(header.get("Columns", 0) or 0),
        )


def _fmt(vector: np.ndarray) -> str:
    return "(" + ", ".join(f"{value:.3f}" for value in vector) + ")"


class _Problem(Exception):
    """Why the files are not one volume; :func:`read_dicom_series` turns it into a redacted :class:`SeriesError`."""


def _series_of(paths: list[Path], headers: list[Dataset | None], folder: Path) -> str:
    """The one SeriesInstanceUID of at least two single-frame DICOM images."""
    if not paths:
        raise _Problem("no DICOM files given")
    unreadable = [path for path, header in zip(paths, headers, strict=True) if header is None]
    if unreadable:
        raise _Problem(f"{len(unreadable)} file(s) not readable as DICOM: {_names(unreadable, folder)}")
    uids = [_series_uid(header) for header in headers]
    not_images = [path for path, uid in zip(paths, uids, strict=True) if uid is None]
    if not_images:
        raise _Problem(
            f"{len(not_images)} file(s) are not DICOM images of a series (no Rows/Columns or no SeriesInstanceUID): "
            f"{_names(not_images, folder)}"
        )
    multi_frame = [path for path, header in zip(paths, headers, strict=True) if _frames(header) > 1]
    if multi_frame:
        raise _Problem(
            f"{len(multi_frame)} multi-frame instance(s) ({_names(multi_frame, folder)}); a series must be "
            "single-frame slices, one per file"
        )
    if len(set(uids)) > 1:
        # UIDs are not quoted: de-identification profiles treat them as identifying too
        counts = ", ".join(
            f"{uids.count(uid)} file(s) like {_label(paths[uids.index(uid)], folder)}" for uid in dict.fromkeys(uids)
        )
        raise _Problem(f"files of {len(set(uids))} series ({counts}); read one series at a time (group_dicom_series)")
    if len(paths) < 2:
        raise _Problem(f"a single slice ({_label(paths[0], folder)}), not a volume: explain it as a 2D image")
    return uids[0]


def _check_same_plane(slices: list[_Slice]) -> None:
    """Every slice has a position, the same orientation (orthonormal cosines), size and pixel spacing."""
    for keyword, attribute in (
        ("ImagePositionPatient", "position"),
        ("ImageOrientationPatient", "orientation"),
        ("PixelSpacing", "pixel_spacing"),
    ):
        missing = [s for s in slices if getattr(s, attribute) is None]
        if missing:
            raise _Problem(
                f"{len(missing)} of {len(slices)} slices have no valid {keyword} (missing, not numbers or not "
                f"positive): {_slice_names(missing)}; a volume needs every slice's geometry"
            )
    reference = slices[0]
    where = f"{reference.label}'s"
    mixed = [s for s in slices if np.abs(s.orientation - reference.orientation).max() > ORIENTATION_TOLERANCE]
    if mixed:
        raise _Problem(
            f"mixed orientations: {len(mixed)} of {len(slices)} slices ({_slice_names(mixed)}) differ from "
            f"{where} ImageOrientationPatient {_fmt(reference.orientation)} (tolerance {ORIENTATION_TOLERANCE:g} "
            "per cosine)"
        )
    row_cosines, column_cosines = reference.orientation[:3], reference.orientation[3:]
    deviations = [np.linalg.norm(row_cosines) - 1.0, np.linalg.norm(column_cosines) - 1.0, row_cosines @ column_cosines]
    if np.abs(deviations).max() > _ORTHONORMAL_TOLERANCE:
        raise _Problem(
            f"ImageOrientationPatient {_fmt(reference.orientation)} is not two orthogonal unit vectors "
            f"(tolerance {_ORTHONORMAL_TOLERANCE:g})"
        )
    sizes = [s for s in slices if (s.rows, s.columns) != (reference.rows, reference.columns)]
    if sizes:
        raise _Problem(
            f"different image sizes: {len(sizes)} of {len(slices)} slices ({_slice_names(sizes)}) are not "
            f"{reference.rows} rows x {reference.columns} columns like {reference.label}"
        )
    spacing = np.asarray(reference.pixel_spacing)
    spaced = [
        s for s in slices if (np.abs(np.subtract(s.pixel_spacing, spacing)) > PIXEL_SPACING_TOLERANCE * spacing).any()
    ]
    if spaced:
        raise _Problem(
            f"different PixelSpacing: {len(spaced)} of {len(slices)} slices ({_slice_names(spaced)}) differ from "
            f"{where} {_fmt(spacing)} mm (relative tolerance {PIXEL_SPACING_TOLERANCE:g})"
        )


def _sorted_along_normal(slices: list[_Slice]) -> list[_Slice]:
    """The slices sorted by position along the normal, checked for duplicates and a constant step."""
    orientation = slices[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    # ties (duplicates, refused below) broken by path, so that the order never depends on the order given
    slices = sorted(slices, key=lambda s: (float(s.position @ normal), str(s.path), s.frame))
    positions = np.stack([s.position for s in slices])
    along_normal = positions @ normal
    steps = np.diff(along_normal)
    distinct = steps > _SAME_POSITION_MM
    median_step = float(np.median(steps[distinct])) if distinct.any() else 0.0
    tolerance = SLICE_STEP_TOLERANCE * median_step

    def gap(k: int) -> str:
        return f"slice {k} ({slices[k].label}) to slice {k + 1} ({slices[k + 1].label})"

    def listed(items: list[str]) -> str:
        more = len(items) - _NAMES_SHOWN
        return "; ".join(items[:_NAMES_SHOWN]) + (f"; and {more} more" if more > 0 else "")

    duplicates = np.flatnonzero(~distinct | (steps <= tolerance))
    if duplicates.size:
        raise _Problem(
            f"duplicate slice positions: {duplicates.size} step(s) along the normal of at most {tolerance:.3f} mm "
            f"({SLICE_STEP_TOLERANCE:g} x the median step of {median_step:.3f} mm): "
            + listed([f"{gap(k)} at {along_normal[k]:.3f} mm" for k in duplicates])
        )
    step_vectors = np.diff(positions, axis=0)
    median_vector = np.median(step_vectors, axis=0)
    uneven = np.flatnonzero(np.linalg.norm(step_vectors - median_vector, axis=1) > tolerance)
    if uneven.size:
        found = []
        for k in uneven:
            if abs(steps[k] - median_step) > tolerance:
                found.append(f"{gap(k)}: {steps[k]:.3f} mm along the normal, expected {median_step:.3f} mm")
            else:  # the same spacing, but the step turns: the gantry tilt changes within the series
                found.append(f"{gap(k)}: step {_fmt(step_vectors[k])} mm, expected {_fmt(median_vector)} mm")
        raise _Problem(
            f"uneven slice spacing (a missing slice?) beyond {tolerance:.3f} mm ({SLICE_STEP_TOLERANCE:g} x the "
            f"median step): {listed(found)}"
        )
    return slices


def _plane_lps(orientation: np.ndarray, pixel_spacing: tuple[float, float], position: np.ndarray) -> np.ndarray:
    """The LPS affine of one slice's pixel grid as the 2D loader (MONAI's ``PydicomReader``) gives a single-frame
    slice: its third column is LPS +z, whatever the orientation (a 2D image has no third axis to describe)."""
    row_spacing, column_spacing = pixel_spacing
    lps = np.eye(4)
    # i runs along a row (column index) and j down the columns (row index), as the 2D loader lays out each slice
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 3] = position
    return lps


def _volume_affine(slices: list[_Slice]) -> np.ndarray:
    """The RAS affine of the (columns, rows, slices) volume of sorted, checked slices."""
    lps = _plane_lps(slices[0].orientation, slices[0].pixel_spacing, slices[0].position)
    # the mean step keeps the first and the last slice exactly where their headers put them
    lps[:3, 2] = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    affine = _RAS_FROM_LPS @ lps
    affine.setflags(write=False)
    return affine


def frame_affines(header: Dataset) -> list[np.ndarray]:
    """The RAS affine of each frame (in frame-number order) of an enhanced multi-frame instance, the affine the 2D
    loader gives a single-frame slice of the same geometry (pixel (column ``i``, row ``j``); third column +z), from
    the frames' functional groups. Call it on an instance :func:`read_dicom_multiframe` has checked.

    Raises:
        ValueError: a frame has no valid plane position, orientation or pixel spacing.
    """
    try:
        frames = _frame_slices(Path("instance"), header)
    except _Problem as problem:
        raise ValueError(str(problem)) from None
    affines = []
    for found in frames:
        if found.position is None or found.orientation is None or found.pixel_spacing is None:
            raise ValueError(f"frame {found.frame} has no valid plane position, orientation or pixel spacing")
        affines.append(_RAS_FROM_LPS @ _plane_lps(found.orientation, found.pixel_spacing, found.position))
    return affines


def read_dicom_series(paths: Sequence[str | os.PathLike], origin: str | os.PathLike | None = None) -> DicomSeries:
    """Read one series' headers, sort the slices along their normal, check that they stack into a volume, and give
    the volume's affine.

    Slices are sorted by the projection of ImagePositionPatient on the normal (row cosine x column cosine), never by
    file name or InstanceNumber. The step between consecutive positions need not lie along the normal (gantry tilt)
    but must be constant. Tolerances: :data:`ORIENTATION_TOLERANCE`, :data:`PIXEL_SPACING_TOLERANCE`,
    :data:`SLICE_STEP_TOLERANCE` (relative to the median step along the normal).

    Args:
        paths: the series' files, in any order (one group of :func:`group_dicom_series`).
        origin: what errors name first, e.g. the folder the user gave; by default the folder of the files.

    Returns:
        The :class:`DicomSeries`: its UID, the sorted paths, the RAS affine of the (columns, rows, slices) volume
        (third column: the step between consecutive slice positions), and the shape.

    Raises:
        SeriesError: a file not readable as DICOM, not an image or multi-frame; fewer than 2 slices; more than one
            series; a missing or invalid ImagePositionPatient, ImageOrientationPatient or PixelSpacing; mixed
            orientations, Rows/Columns or PixelSpacing; duplicate positions; uneven spacing (a missing slice: the
            gap, expected and found steps in mm). Messages name files, counts and geometry, never patient data.

    Example::

        series = read_dicom_series(sorted(Path("ct_series").glob("*.dcm")), origin="ct_series")
        volume = np.stack([LoadScan()(path)[0].numpy() for path in series.paths], axis=-1)   # series.shape
        write_nifti(volume, series.affine, "ct_series.nii.gz")
    """
    paths = [Path(path) for path in paths]
    folder = _folder_of(paths) if paths else Path(".")
    headers = [_read_header(path) for path in paths]

    def slices() -> tuple[str, list[_Slice]]:
        series_uid = _series_of(paths, headers, folder)
        return series_uid, [_slice(path, header, folder) for path, header in zip(paths, headers, strict=True)]

    return _volume(slices, headers, origin if origin is not None else folder)


def frame_functional_item(header: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional group macro (e.g. ``"PlanePositionSequence"``) that applies to ``frame`` (1-based) of
    an enhanced multi-frame instance: the frame's own (Per-frame Functional Groups), else the one all frames share
    (Shared Functional Groups); ``None`` when neither has it."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    shared = header.get("SharedFunctionalGroupsSequence") or []
    groups = ([per_frame[frame - 1]] if 0 < frame <= len(per_frame) else []) + list(shared[:1])
    for group in groups:
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _frame_slices(path: Path, header: Dataset) -> list[_Slice]:
    """One :class:`_Slice` per frame of an enhanced multi-frame instance, from its functional groups."""
    frames = _frames(header)
    if _series_uid(header) is None:
        raise _Problem("not a DICOM image of a series (no Rows/Columns or no SeriesInstanceUID)")
    if frames < 2:
        raise _Problem(f"{frames} frame, not a volume: explain it as a 2D image")
    if frames > MAX_FRAMES:
        raise _Problem(f"{frames} frames, more than the {MAX_FRAMES} a volume may have")
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames:
        raise _Problem(
            f"a multi-frame instance of {frames} frames with {len(per_frame)} Per-frame Functional Groups items; a "
            "volume needs the plane position of every frame (an enhanced multi-frame image: Enhanced CT/MR, Legacy "
            "Converted Enhanced, ...)"
        )

    def value(frame: int, sequence: str, keyword: str):
        item = frame_functional_item(header, frame, sequence)
        return item.get(keyword) if item is not None else None

    with messages_redacted(header):
        return [
            _Slice(
                path=path,
                label=f"frame {frame}",
                position=_numbers(value(frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_numbers(value(frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=_positive_spacing(value(frame, "PixelMeasuresSequence", "PixelSpacing")),
                rows=int(header.get("Rows", 0) or 0),
                columns=int(header.get("Columns", 0) or 0),
                frame=frame,
            )
            for frame in range(1, frames + 1)
        ]


def read_dicom_multiframe(source: str | os.PathLike | Dataset, origin: str | os.PathLike | None = None) -> DicomSeries:
    """Read an enhanced multi-frame instance's header as one volume: its frames sorted along their normal, checked
    and stacked exactly as :func:`read_dicom_series` does with the instances of a series.

    Each frame's plane position, orientation and pixel spacing come from its Per-frame Functional Groups, else from
    the Shared Functional Groups (Plane Position, Plane Orientation, Pixel Measures macros), as Enhanced CT, MR and
    PET and the Legacy Converted Enhanced images state them. Frames are sorted by their position along the normal,
    not by frame number or dimension index, so a file whose frames run from head to feet gives the same volume as
    one that runs from feet to head; :attr:`DicomSeries.frames` says which frame each slice is.

    Args:
        source: the file, or its dataset (pixels not needed).
        origin: what errors name; by default the file.

    Returns:
        The :class:`DicomSeries`, whose ``paths`` repeat the file once per slice and whose ``frames`` give each
        slice's frame number.

    Raises:
        SeriesError: not readable as DICOM; not an image with a SeriesInstanceUID; fewer than 2 frames; a frame
            without a valid plane position, orientation or pixel spacing; mixed orientations or spacings; duplicate
            positions; uneven spacing (as :func:`read_dicom_series`, naming frames by number). Never patient data.

    Example::

        volume = read_dicom_multiframe("enhanced_ct.dcm")
        first = pydicom.dcmread("enhanced_ct.dcm").pixel_array[volume.frames[0] - 1]   # the lowest slice
    """
    header = source if isinstance(source, Dataset) else _read_header(Path(source))
    path = Path(getattr(source, "filename", None) or "instance") if isinstance(source, Dataset) else Path(source)

    def slices() -> tuple[str, list[_Slice]]:
        if header is None:
            raise _Problem("not readable as DICOM")
        return _series_uid(header) or "", _frame_slices(path, header)

    return _volume(slices, [header], origin if origin is not None else path)


def _volume(
    slices: Callable[[], tuple[str, list[_Slice]]], headers: Sequence[Dataset | None], origin: str | os.PathLike
) -> DicomSeries:
    """The checked, sorted volume of the slices ``slices()`` reads; a :class:`SeriesError` naming ``origin`` (with
    the values of ``headers`` redacted from its message) for any :class:`_Problem`."""
    try:
        series_uid, found = slices()
        _check_same_plane(found)
        found = _sorted_along_normal(found)
    except _Problem as problem:
        message = str(problem)
        # file names, or values pydicom could not convert, may still spell a patient's name or date
        for header in headers:
            message = redact_identifying_values(message, header)
        raise SeriesError(origin, message) from None
    reference = found[0]
    return DicomSeries(
        series_uid=series_uid,
        paths=tuple(s.path for s in found),
        affine=_volume_affine(found),
        shape=(reference.columns, reference.rows, len(found)),
        frames=tuple(s.frame for s in found) if reference.frame else (),
    )
