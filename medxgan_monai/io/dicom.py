"""DICOM helpers: MR image output for 2D slices (pydicom), and keeping patient data out of messages."""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medxgan_monai.io.atomic import atomic_output

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "MRSliceGeometry",
    "SyntheticPatient",
    "messages_redacted",
    "nominal_pixel_spacing",
    "redact_identifying_values",
    "write_mr_slice",
]

#: attributes that identify a patient or the people and places around them; their values never appear in messages
IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientComments",
        "MedicalRecordLocator",
        "EthnicGroup",
        "MilitaryRank",
        "BranchOfService",
        "AdditionalPatientHistory",
        "AdmittingDiagnosesDescription",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
    }
)
#: value representations that are identifying wherever they occur (names, dates, times, ages)
_IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM", "AS"})
_REDACTED = "<{keyword}>"


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
    ds.PatientPosition = "HFS"  # General Series Type 2C for MR: the synthetic axial slices are head first supine
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


def _texts(value, vr: str) -> list[str]:
    """A value as the strings a message could quote: the whole (multi-values joined by backslashes), each value, and
    for person names each component group and component and the caret-free spelling."""
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    parts = [str(part) for part in value] if isinstance(value, (list, tuple, MultiValue)) else [str(value)]
    whole = "\\".join(parts)
    texts = [whole, *whole.split("\\"), *parts]
    if vr == "PN":
        groups = [group for text in list(texts) for group in text.split("=")]
        texts += groups + [" ".join(group.split("^")).strip() for group in groups]
        texts += [component for group in groups for component in group.split("^")]
    return [text.strip(" \x00") for text in texts]


def _identifying_values(dataset: Dataset, found: dict[str, str] | None = None) -> dict[str, str]:
    """Every identifying value of ``dataset`` (nested sequences included) as text, mapped to its keyword. Values not
    yet converted are taken from their raw bytes (read as Latin-1), so those pydicom cannot convert are found too."""
    found = {} if found is None else found
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)  # not converted: conversion is what fails for the values we look for
        keyword = keyword_for_tag(tag) or str(tag)
        vr = raw.VR or (dictionary_VR(tag) if tag in DicomDictionary else "UN")
        if vr == "SQ":
            try:
                items = dataset[tag].value
            except Exception:  # an unreadable sequence: nothing in it can be quoted either
                continue
            for item in items:
                _identifying_values(item, found)
            continue
        if keyword not in IDENTIFYING_KEYWORDS and vr not in _IDENTIFYING_VRS:
            continue
        # raw bytes stay unconverted: converting would make pydicom warn, quoting the value, while we redact
        for text in _texts(raw.value, vr) if raw.value is not None else []:
            # one-character values (a sex, a component) would blank out ordinary letters of the message
            if len(text) > 1:
                found[text] = keyword
    return found


def redact_identifying_values(text: str, dataset: Dataset | None) -> str:
    """``text`` with every identifying value of ``dataset`` replaced by ``<Keyword>`` (e.g. ``<PatientBirthDate>``).

    Messages from pydicom and highdicom quote offending values; ours must not carry patient data into logs, CSVs or
    MLflow. Identifying means :data:`IDENTIFYING_KEYWORDS` plus every name, date, time and age. ``dataset`` ``None``
    returns ``text`` unchanged.

    Example::

        redact_identifying_values("Unable to convert '03.02.1901' to 'DA' object", ds)
        # "Unable to convert '<PatientBirthDate>' to 'DA' object"
    """
    if dataset is None:
        return text
    return _redact(text, _identifying_values(dataset))


def _redact(text: str, values: dict[str, str]) -> str:
    # longest first, so that a name is replaced before a component of it
    for value, keyword in sorted(values.items(), key=lambda item: -len(item[0])):
        text = text.replace(value, _REDACTED.format(keyword=keyword))
    return text


def _positive_spacing(value) -> tuple[float, float] | None:
    try:
        row_spacing, column_spacing = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None
    valid = np.isfinite([row_spacing, column_spacing]).all() and row_spacing > 0 and column_spacing > 0
    return (row_spacing, column_spacing) if valid else None


def nominal_pixel_spacing(dataset: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm: ``PixelSpacing``, else ``ImagerPixelSpacing`` (projection radiographs),
    else 1 mm; values <= 0 or not finite count as missing. The loader and the derived objects both use this rule."""
    return (
        _positive_spacing(dataset.get("PixelSpacing"))
        or _positive_spacing(dataset.get("ImagerPixelSpacing"))
        or (1.0, 1.0)
    )


class _RedactingFilter(logging.Filter):
    def __init__(self, values: dict[str, str]) -> None:
        super().__init__()
        self.values = values

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _redact(record.getMessage(), self.values), ()
        return True


#: libraries whose log records quote attribute values (pydicom: "Error while processing tag ...: <value>")
_QUOTING_LOGGERS = ("pydicom", "highdicom")


@contextmanager
def messages_redacted(dataset: Dataset) -> Iterator[None]:
    """Within the block, pydicom's and highdicom's log records and every Python warning are passed on with the
    identifying values of ``dataset`` redacted (:func:`redact_identifying_values`).

    Warnings are collected and re-issued when the block ends; ``warnings.catch_warnings`` is process-wide, so a
    warning another thread raises meanwhile is re-issued (redacted) from here.

    Example::

        with messages_redacted(ds):
            ds.to_json_dict()   # "Error while processing tag 00101030: ... '<PatientWeight>'"
    """
    values = _identifying_values(dataset)
    redacting = _RedactingFilter(values)
    loggers = [logging.getLogger(name) for name in _QUOTING_LOGGERS]
    for quoting_logger in loggers:
        quoting_logger.addFilter(redacting)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for quoting_logger in loggers:
            quoting_logger.removeFilter(redacting)
        for warning in caught:
            warnings.warn_explicit(
                _redact(str(warning.message), values),
                warning.category,
                warning.filename,
                warning.lineno,
            )
