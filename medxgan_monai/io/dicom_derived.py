"""Explanations stored as new DICOM series in the source study: a Secondary Capture overlay and a Parametric Map.

Both objects are built from a *tolerant copy* of the source header: a value invalid for its value representation (a
birth date written ``03.02.1901``, an over-long name) is left empty in the derived objects instead of failing the
instance, and is reported by keyword only. Errors and warnings of this module never quote patient data (see
:func:`medxgan_monai.io.dicom.redact_identifying_values`).

Projection images (CR, DX, ultrasound, secondary captures) have no ImagePositionPatient/ImageOrientationPatient and
often no Frame of Reference, but the Parametric Map IOD requires a frame of reference and a plane position and
orientation. Their map gets a *nominal* geometry: origin 0, identity orientation, the pixel spacing the loader uses
(PixelSpacing, else ImagerPixelSpacing, else 1 mm), in a new frame of reference derived from the source instance UID
(the source's own frame of reference, if any, is not claimed for made-up positions). The pixel grid is the source's,
one to one, and the map references the source instance; the nominal geometry is the one the loader gives the image.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable

import highdicom as hd
import numpy as np
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, validate_value

from medxgan_monai.io.atomic import atomic_output
from medxgan_monai.io.dicom import messages_redacted, nominal_pixel_spacing, redact_identifying_values

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "DerivedDicomError",
    "write_overlay_secondary_capture",
    "write_saliency_parametric_map",
]

logger = logging.getLogger(__name__)

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
MANUFACTURER = "medxgan-monai"
_PIXEL_TAGS = frozenset(tag_for_keyword(keyword) for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
_PATIENT_ORIENTATION_LETTERS = set("LRAPHF")
#: the attributes the derived objects cannot do without; an invalid value here fails the instance
_REQUIRED_KEYWORDS = frozenset({"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Rows", "Columns"})


class DerivedDicomError(ValueError):
    """A derived DICOM object could not be written; the message names the file and never quotes patient data."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _source_reference(source: Dataset) -> DicomSequence:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return DicomSequence([item])


def _save(dataset: Dataset, path: str | os.PathLike, overwrite: bool) -> str:
    with atomic_output(path, overwrite=overwrite) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return str(dataset.SOPInstanceUID)


def _valid_for_vr(element) -> bool:
    """Whether the value is valid for its VR, as highdicom will need it (dates and times must also parse).
    Numbers pydicom already converted (DS, IS) were valid when read."""
    values = element.value if isinstance(element.value, (list, tuple, MultiValue)) else [element.value]
    parse = {"DA": DA, "DT": DT, "TM": TM}.get(element.VR)
    try:
        for value in values:
            if value is None or value == "" or isinstance(value, (int, float, bytes, DA, DT, TM)):
                continue
            validate_value(element.VR, value, pydicom_config.RAISE)
            if parse is not None:
                parse(value)
    except Exception:  # pydicom raises ValueError or TypeError; the value itself must not travel on
        return False
    return True


def _blank_invalid_values(dataset: Dataset, path: str | os.PathLike) -> None:
    """Empty, in place, every value of ``dataset`` (nested sequences included) that is invalid for its VR."""
    for element in list(dataset.iterall()):
        if element.VR == "SQ" or element.tag in _PIXEL_TAGS or _valid_for_vr(element):
            continue
        if element.keyword in _REQUIRED_KEYWORDS:
            raise DerivedDicomError(path, f"source attribute {element.keyword} has a value invalid for its VR")
        logger.warning(
            "%s: source attribute %s has a value invalid for its VR %s; it is left empty in the derived object",
            path,
            element.keyword or element.tag,
            element.VR,
        )
        element.value = None


def _positioned(source: Dataset) -> bool:
    try:
        position = [float(value) for value in source.ImagePositionPatient]
        orientation = [float(value) for value in source.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return False
    return len(position) == 3 and len(orientation) == 6 and np.isfinite(position + orientation).all()


def _derivation_source(source: Dataset, path: str | os.PathLike) -> Dataset:
    """A header copy of ``source`` that highdicom can derive both objects from (the source itself is not changed):
    invalid values emptied; projection images given the nominal plane geometry of the module docstring."""
    header = copy.deepcopy(Dataset({tag: element for tag, element in source.items() if tag not in _PIXEL_TAGS}))
    if hasattr(source, "file_meta"):
        header.file_meta = copy.deepcopy(source.file_meta)
    _blank_invalid_values(header, path)
    if not _positioned(header):
        header.ImagePositionPatient = [0.0, 0.0, 0.0]
        header.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        # made-up positions must not claim the source's own frame of reference
        header.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "nominal plane geometry"])
        header.PositionReferenceIndicator = ""
    elif "FrameOfReferenceUID" not in header or not header.FrameOfReferenceUID:
        header.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "frame of reference"])
        header.PositionReferenceIndicator = ""
    header.PixelSpacing = list(nominal_pixel_spacing(header))
    if not _positive(header.get("SliceThickness")):
        header.SliceThickness = None
    return header


def _positive(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation when highdicom accepts it, else the one its ImageOrientationPatient implies,
    else ``None`` (unknown)."""
    orientation = [str(value) for value in source.get("PatientOrientation") or []]
    if len(orientation) == 2 and all(
        len(value) == 1 and value in _PATIENT_ORIENTATION_LETTERS for value in orientation
    ):
        return orientation[0], orientation[1]
    if not _positioned(source):
        return None
    row, column = np.asarray([float(value) for value in source.ImageOrientationPatient]).reshape(2, 3)
    return _direction_letter(row), _direction_letter(column)


def _direction_letter(cosines: np.ndarray) -> str:
    """The patient direction a row or column mostly runs towards (LPS: +x left, +y posterior, +z head)."""
    axis = int(np.argmax(np.abs(cosines)))
    return (("R", "L"), ("A", "P"), ("F", "H"))[axis][int(cosines[axis] > 0)]


def _laterality(source: Dataset) -> str | None:
    """The source's Laterality (or its ImageLaterality, when R or L); empty (None) when the source does not say:
    Laterality is Type 2C, and empty is DICOM's "unknown"."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "").strip()
        if value in ("R", "L"):
            return value
    return None


def _build(kind: str, path: str | os.PathLike, source: Dataset, make: Callable[[], Dataset]) -> Dataset:
    """Run ``make`` (the tolerant copy of the source and highdicom's constructor): its log records, warnings and
    errors pass on with patient data redacted."""
    try:
        with messages_redacted(source):
            return make()
    except DerivedDicomError:
        raise
    except Exception as error:  # highdicom and pydicom raise many types, and quote the offending value
        problem = redact_identifying_values(f"{type(error).__name__}: {error}", source)
    # raised outside the handler: the original exception, value included, is not even the implicit context
    raise DerivedDicomError(path, f"cannot build the {kind}: {problem}")


def write_overlay_secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    path: str | os.PathLike,
    series_description: str = f"medXGAN explanation - {NOT_FOR_CLINICAL_USE}",
    series_number: int = 9001,
    overwrite: bool = False,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> str:
    """Write an RGB overlay as a DICOM Secondary Capture in the source's study, referencing the source instance.

    Args:
        source: the source DICOM dataset (its patient, study and frame of reference are copied, tolerantly).
        rgb: ``(Rows, Columns, 3)`` uint8 overlay in the source's pixel grid.
        path: destination file (written atomically).
        series_instance_uid, sop_instance_uid: explicit UIDs (e.g. derived from the source, so that a redelivery
            after a crash is the same object); new random UIDs by default.

    Returns:
        The new SOPInstanceUID.

    Raises:
        DerivedDicomError: the object cannot be built; the message names ``path`` and quotes no patient data.
    """
    rgb = np.asarray(rgb)
    if rgb.shape != (source.Rows, source.Columns, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"{path}: overlay must be uint8 of shape {(source.Rows, source.Columns, 3)}, got {rgb.shape}")

    def make() -> Dataset:
        header = _derivation_source(source, path)
        # the overlay keeps the source's pixel grid: its orientation and spacing, when the source states them
        orientation = _patient_orientation(source)
        spacing = source.get("PixelSpacing")
        has_spacing = spacing is not None and len(spacing) == 2 and all(_positive(value) for value in spacing)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            pixel_spacing=tuple(float(value) for value in spacing) if has_spacing else None,
            patient_orientation=orientation or ("L", "P"),
        )
        if orientation is None:
            image.PatientOrientation = None  # Type 2: unknown is stated as empty, not guessed
        image.Laterality = _laterality(source)
        image.SeriesDescription = series_description
        image.ImageComments = f"Saliency overlay from medxgan-monai. {NOT_FOR_CLINICAL_USE}."
        image.BurnedInAnnotation = "YES"
        image.SourceImageSequence = _source_reference(source)
        if source.get("FrameOfReferenceUID"):
            image.FrameOfReferenceUID = source.FrameOfReferenceUID
        return image

    image = _build("Secondary Capture", path, source, make)
    return _save(image, path, overwrite)


def write_saliency_parametric_map(
    source: Dataset,
    saliency: np.ndarray,
    path: str | os.PathLike,
    series_description: str = f"medXGAN saliency - {NOT_FOR_CLINICAL_USE}",
    series_number: int = 9002,
    overwrite: bool = False,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> str:
    """Write a float saliency map in [0, 1] as a DICOM Parametric Map derived from the source instance.

    The map keeps the source's pixel grid, plane position and orientation, study and frame of reference (highdicom
    copies them from the source image); projection images without position get the nominal geometry described in
    the module docstring.

    Args:
        source: the source DICOM dataset (single frame).
        saliency: ``(Rows, Columns)`` float map.
        path: destination file (written atomically).
        series_instance_uid, sop_instance_uid: explicit UIDs; new random UIDs by default.

    Returns:
        The new SOPInstanceUID.

    Raises:
        DerivedDicomError: the object cannot be built; the message names ``path`` and quotes no patient data.
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

    def make() -> Dataset:
        header = _derivation_source(source, path)
        nominal = not _positioned(source)
        description = f"medXGAN saliency{', nominal plane geometry' if nominal else ''}, {NOT_FOR_CLINICAL_USE}"
        parametric_map = hd.pm.ParametricMap(
            source_images=[header],
            pixel_array=saliency,
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="medXGAN explainer",
            software_versions=_version(),
            device_serial_number="0",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            content_label="SALIENCY",
            content_description=description[:64],
        )
        parametric_map.Laterality = _laterality(source)
        parametric_map.SeriesDescription = series_description
        return parametric_map

    parametric_map = _build("Parametric Map", path, source, make)
    return _save(parametric_map, path, overwrite)


def _version() -> str:
    from medxgan_monai import __version__

    return __version__
