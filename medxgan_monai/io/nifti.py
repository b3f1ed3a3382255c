"""NIfTI output that keeps the source geometry exactly."""

from __future__ import annotations

import os
from collections.abc import Mapping

import nibabel as nib
import numpy as np

from medxgan_monai.io.atomic import atomic_output

__all__ = ["SLICE_SOURCES", "SOURCE_AFFINE", "SOURCE_FORMAT", "SOURCE_SHAPE", "output_geometry", "recorded_shape"]
__all__ += ["write_nifti"]


#: metadata keys under which the loader (:class:`~medxgan_monai.transforms.LoadScan`) records a source's format
#: ("nifti", "dicom" or "bitmap"), array shape as stored, and the affine its outputs are written with
SOURCE_FORMAT, SOURCE_SHAPE, SOURCE_AFFINE = "source_format", "source_shape", "source_affine"
#: metadata key of a DICOM volume loaded whole (for a 3D model): its slices' source files in slice order, as one JSON
#: string (one string per image collates into a batch whatever the slice counts; JSON is read back as data only)
SLICE_SOURCES = "slice_sources"


#: NIfTI's largest number of axes: a recorded shape is padded with -1 to this length, so that the metadata of images
#: of any rank collate into one batch (a 2D image beside a slice of a 3D volume)
_RECORDED_AXES = 7


def recorded_shape(shape) -> np.ndarray:
    """``shape`` as :data:`SOURCE_SHAPE` records it: padded with -1 to a fixed length (see :func:`output_geometry`)."""
    shape = [int(size) for size in shape]
    return np.asarray(shape + [-1] * (_RECORDED_AXES - len(shape)), dtype=np.int64)


def output_geometry(meta: Mapping) -> tuple[np.ndarray, tuple | None]:
    """The affine and array shape that outputs derived from a loaded image are written with, from its metadata.

    NIfTI sources: the file's own affine and shape, exactly (singleton axes included). PNG/JPEG, which carry no
    geometry: the identity (one unit per pixel, i along a row, j down the columns) and ``None`` (the shape of the
    array written). DICOM: the loader's original affine and ``None``. The affine is returned as recorded; callers
    check it is finite (:func:`write_nifti` refuses one that is not). The source file is not opened again.
    """
    affine = np.asarray(meta[SOURCE_AFFINE], dtype=np.float64)
    if str(meta[SOURCE_FORMAT]) == "nifti":
        return affine, tuple(int(size) for size in np.asarray(meta[SOURCE_SHAPE]).reshape(-1) if size >= 0)
    return affine, None


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write ``array`` with the 4x4 ``affine`` as NIfTI-1 (sform and qform both set), atomically.

    Example::

        write_nifti(np.zeros((64, 64), np.int16), np.eye(4), "out/image.nii.gz")
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: affine must be 4x4, got shape {affine.shape}")
    if not np.isfinite(affine).all():
        raise ValueError(f"{path}: affine has NaN or infinite entries")
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(image, tmp)
