"""NIfTI output that keeps the source geometry exactly."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from medxgan_monai.io.atomic import atomic_output

__all__ = ["write_nifti"]


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write ``array`` with the 4x4 ``affine`` as NIfTI-1 (sform and qform both set), atomically.

    Example::

        write_nifti(np.zeros((64, 64), np.int16), np.eye(4), "out/image.nii.gz")
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: affine must be 4x4, got shape {affine.shape}")
    image = nib.Nifti1Image(np.asarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(image, tmp)
