"""NIfTI output that keeps the source geometry exactly."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from medxgan_monai.io.atomic import atomic_output

__all__ = ["output_geometry", "write_nifti"]


def output_geometry(source: str | os.PathLike, kind: str, loaded_affine=None) -> tuple[np.ndarray, tuple | None]:
    """The affine and array shape that outputs derived from the image ``source`` are written with.

    NIfTI (``kind == "nifti"``): the file's own affine and shape, exactly (singleton axes included). PNG/JPEG
    (``"bitmap"``), which carry no geometry: the identity (one unit per pixel, i along a row, j down the columns) and
    ``None`` (the shape of the array written). Otherwise (DICOM): ``loaded_affine``, the loader's original affine.
    The affine is returned as read; callers check it is finite (:func:`write_nifti` refuses one that is not).
    """
    if kind == "nifti":
        header = nib.load(source)
        return np.asarray(header.affine, dtype=np.float64), tuple(header.shape)
    if kind == "bitmap":
        return np.eye(4), None
    return np.asarray(loaded_affine, dtype=np.float64), None


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
