"""DICOM MR image output for 2D slices, written with pydicom."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medxgan_monai.io.atomic import atomic_output

__all__ = ["MRSliceGeometry", "SyntheticPatient", "write_mr_slice"]


@dataclass(frozen=True)
class MRSliceGeometry:
    """Patient-space geometry of one slice, in DICOM terms (LPS, millimetres).

    Attributes:
        image_position: ImagePositionPatient, the centre of the first transmitted pixel.
        image_orientation: ImageOrientationPatient, row then column direction cosines.
        pixel_spacing: PixelSpacing, (spacing between rows, spacing between columns).
        slice_thickness: SliceThickness.
    """

    image_position: tuple[float, float, float]
    image_orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    slice_thickness: float = 1.0


@dataclass(frozen=True)
class SyntheticPatient:
    """De-identified patient and study identity for demo data; UIDs are generated when not given."""

    patient_id: str
    patient_name: str
    study_id: str = "1"
    accession_number: str = ""
    study_instance_uid: str = field(default_factory=generate_uid)
    series_instance_uid: str = field(default_factory=generate_uid)


def write_mr_slice(
    pixels: np.ndarray,
    geometry: MRSliceGeometry,
    patient: SyntheticPatient,
    path: str | os.PathLike,
    *,
    series_description: str = "",
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    content_datetime: datetime.datetime | None = None,
    overwrite: bool = False,
) -> str:
    """Write a 2D unsigned 16-bit image as a single-frame DICOM MR Image Storage instance.

    Args:
        pixels: ``(rows, columns)`` array of integers in ``[0, 65535]``, in DICOM pixel order.
        geometry: slice position, orientation and spacing.
        patient: patient, study and series identity.
        path: destination file; written atomically.

    Returns:
        The SOPInstanceUID of the written instance.

    Example::

        uid = write_mr_slice(np.zeros((64, 64), np.uint16), MRSliceGeometry((0.0, 0.0, 0.0)),
                             SyntheticPatient("DEMO-0001", "DEMO^0001"), "slice.dcm")
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"{path}: pixels must be 2D (rows, columns), got shape {pixels.shape}")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise ValueError(f"{path}: pixel values must lie in [0, 65535], got [{pixels.min()}, {pixels.max()}]")
    pixels = pixels.astype(np.uint16)
    sop_instance_uid = sop_instance_uid or generate_uid()
    when = content_datetime or datetime.datetime(2000, 1, 1, 12, 0, 0)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = patient.accession_number
    ds.Modality = "MR"
    ds.Manufacturer = "medxgan-monai synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic demo study"
    ds.SeriesDescription = series_description
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic data: no real patient"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = f"{geometry.slice_thickness:.6g}"
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.StudyInstanceUID = patient.study_instance_uid
    ds.SeriesInstanceUID = patient.series_instance_uid
    ds.StudyID = patient.study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[patient.study_instance_uid, "frame-of-reference"])
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry.image_position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in geometry.image_orientation]
    ds.SliceLocation = f"{geometry.image_position[2]:.6f}"
    ds.PixelSpacing = [f"{v:.6f}" for v in geometry.pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()

    with atomic_output(path, overwrite=overwrite) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return sop_instance_uid
