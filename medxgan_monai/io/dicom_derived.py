"""Explanations stored as new DICOM series in the source study: a Secondary Capture overlay and a Parametric Map."""

from __future__ import annotations

import os

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medxgan_monai.io.atomic import atomic_output

__all__ = ["NOT_FOR_CLINICAL_USE", "write_overlay_secondary_capture", "write_saliency_parametric_map"]

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
MANUFACTURER = "medxgan-monai"


def _source_reference(source: Dataset) -> DicomSequence:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return DicomSequence([item])


def _save(dataset: Dataset, path: str | os.PathLike, overwrite: bool) -> str:
    with atomic_output(path, overwrite=overwrite) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return str(dataset.SOPInstanceUID)


def write_overlay_secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    path: str | os.PathLike,
    series_description: str = f"medXGAN explanation - {NOT_FOR_CLINICAL_USE}",
    series_number: int = 9001,
    overwrite: bool = False,
) -> str:
    """Write an RGB overlay as a DICOM Secondary Capture in the source's study, referencing the source instance.

    Args:
        source: the source DICOM dataset (its patient, study and frame of reference are copied).
        rgb: ``(Rows, Columns, 3)`` uint8 overlay in the source's pixel grid.
        path: destination file (written atomically).

    Returns:
        The new SOPInstanceUID.
    """
    rgb = np.asarray(rgb)
    if rgb.shape != (source.Rows, source.Columns, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"{path}: overlay must be uint8 of shape {(source.Rows, source.Columns, 3)}, got {rgb.shape}")
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in source.PixelSpacing) if "PixelSpacing" in source else None,
        patient_orientation=("L", "P"),
    )
    image.SeriesDescription = series_description
    image.ImageComments = f"Saliency overlay from medxgan-monai. {NOT_FOR_CLINICAL_USE}."
    image.BurnedInAnnotation = "YES"
    image.SourceImageSequence = _source_reference(source)
    if "FrameOfReferenceUID" in source:
        image.FrameOfReferenceUID = source.FrameOfReferenceUID
    return _save(image, path, overwrite)


def write_saliency_parametric_map(
    source: Dataset,
    saliency: np.ndarray,
    path: str | os.PathLike,
    series_description: str = f"medXGAN saliency - {NOT_FOR_CLINICAL_USE}",
    series_number: int = 9002,
    overwrite: bool = False,
) -> str:
    """Write a float saliency map in [0, 1] as a DICOM Parametric Map derived from the source instance.

    The map keeps the source's pixel grid, plane position and orientation, study and frame of reference (highdicom
    copies them from the source image).

    Args:
        source: the source DICOM dataset (single frame).
        saliency: ``(Rows, Columns)`` float map.
        path: destination file (written atomically).

    Returns:
        The new SOPInstanceUID.
    """
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != (source.Rows, source.Columns):
        raise ValueError(f"{path}: saliency must have shape {(source.Rows, source.Columns)}, got {saliency.shape}")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY",
        lut_explanation="medXGAN saliency (normalised to [0, 1])",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    parametric_map = hd.pm.ParametricMap(
        source_images=[source],
        pixel_array=saliency,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="medXGAN explainer",
        software_versions=_version(),
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="SALIENCY",
        content_description=f"medXGAN saliency, {NOT_FOR_CLINICAL_USE}"[:64],
    )
    parametric_map.SeriesDescription = series_description
    return _save(parametric_map, path, overwrite)


def _version() -> str:
    from medxgan_monai import __version__

    return __version__
