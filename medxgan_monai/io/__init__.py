"""Writers that store images and results next to the source study: DICOM and NIfTI, always atomically."""

from medxgan_monai.io.atomic import atomic_output, atomic_replace_dir, atomic_write_text
from medxgan_monai.io.dicom import MRSliceGeometry, SyntheticPatient, write_mr_slice
from medxgan_monai.io.nifti import write_nifti

__all__ = [
    "MRSliceGeometry",
    "SyntheticPatient",
    "atomic_output",
    "atomic_replace_dir",
    "atomic_write_text",
    "write_mr_slice",
    "write_nifti",
]
