"""Explanations stored as new DICOM series in the source study: a Secondary Capture overlay and a Parametric Map of
one source instance, and, for a source series explained slice by slice, one multi-frame Parametric Map and one DICOM
SEG of the whole series (each frame referencing its source instance).

Every object is built from a *tolerant copy* of the source header(s): a value invalid for its value representation (a
birth date written ``03.02.1901``, an over-long name) is left empty in the derived objects instead of failing the
instance, and is reported by keyword only. Errors and warnings of this module never quote patient data (see
:func:`medxgan_monai.io.dicom.redact_identifying_values`).

Projection images (CR, DX, ultrasound, secondary captures) have no ImagePositionPatient/ImageOrientationPatient and
often no Frame of Reference, but the Parametric Map IOD requires a frame of reference and a plane position and
orientation. Their map gets a *nominal* geometry: origin 0, identity orientation, the pixel spacing the loader uses
(PixelSpacing, else ImagerPixelSpacing, else 1 mm), in a new frame of reference derived from the source instance UID
(the source's own frame of reference, if any, is not claimed for made-up positions). The pixel grid is the source's,
one to one, and the map references the source instance; the nominal geometry is the one the loader gives the image.
A series of several instances needs the real plane geometry of every instance (nominal positions would coincide).

Laterality (General Series, Type 2C, required for a paired body part unless the object states laterality another
way): the Secondary Capture and the Parametric Maps carry the source's when it states R or L, and otherwise an empty
element, DICOM's "unknown" (they carry no Body Part Examined, so whether the structure is paired cannot be told; an
absent element is what dciodvfy reports as a missing Type 2C attribute, an empty one it only warns about). The SEG
carries none: a segmentation states laterality per segment, and dciodvfy rejects a series Laterality beside a Segment
Sequence.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence

import highdicom as hd
import numpy as np
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
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
    "frame_header",
    "write_overlay_secondary_capture",
    "write_saliency_parametric_map",
    "write_series_parametric_map",
    "write_series_segmentation",
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


def _source_reference(source: Dataset, frame: int | None = None) -> DicomSequence:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return DicomSequence([item])


#: functional-group attributes of an enhanced multi-frame instance that describe all its frames at once
_MULTIFRAME_KEYWORDS = ("NumberOfFrames", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")


def frame_header(source: Dataset, frame: int) -> Dataset:
    """The header of one frame (1-based) of an enhanced multi-frame instance, as a single-frame slice states it: the
    instance's top-level attributes (patient, study, series, SOP Class and Instance UIDs) with the frame's plane
    position, orientation and pixel spacing (from its functional groups) as ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing. For objects derived from one frame, e.g. a Secondary Capture that
    references the instance and the frame (``referenced_frame`` of :func:`write_overlay_secondary_capture`).

    Raises:
        DerivedDicomError: ``frame`` is not a frame of ``source``.
    """
    from medxgan_monai.io.series import frame_functional_item

    frames = int(source.get("NumberOfFrames") or 1)
    if not 1 <= frame <= frames:
        raise DerivedDicomError(str(source.get("filename", "source")), f"no frame {frame} of {frames}")
    header = Dataset({tag: element for tag, element in source.items() if tag not in _PIXEL_TAGS})
    for keyword in _MULTIFRAME_KEYWORDS:
        if keyword in header:
            del header[keyword]
    for sequence, keyword in (
        ("PlanePositionSequence", "ImagePositionPatient"),
        ("PlaneOrientationSequence", "ImageOrientationPatient"),
        ("PixelMeasuresSequence", "PixelSpacing"),
    ):
        item = frame_functional_item(source, frame, sequence)
        if item is not None and keyword in item:
            header[keyword] = item[keyword]
    return header


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


def _multiframe(source: Dataset) -> bool:
    return int(source.get("NumberOfFrames") or 1) > 1


def _positioned(source: Dataset) -> bool:
    """Whether the source states its plane geometry: ImagePositionPatient and ImageOrientationPatient, or for an
    enhanced multi-frame instance, every frame's Plane Position and Plane Orientation (functional groups)."""
    if _multiframe(source):
        from medxgan_monai.io.series import SeriesError, read_dicom_multiframe

        try:
            read_dicom_multiframe(source)
        except SeriesError:
            return False
        return True
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
    if _multiframe(header):  # checked by _checked_series: its frames' functional groups hold the geometry
        if not header.get("FrameOfReferenceUID"):
            header.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "frame of reference"])
            header.PositionReferenceIndicator = ""
        return header
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


def _laterality(sources: Sequence[Dataset]) -> str:
    """The Laterality the sources state (their Laterality, or their ImageLaterality when R or L) when they all agree;
    empty, DICOM's "unknown", when one of them does not say or they differ."""
    stated = set()
    for source in sources:
        values = (str(source.get(keyword) or "").strip() for keyword in ("Laterality", "ImageLaterality"))
        stated.add(next((value for value in values if value in ("R", "L")), ""))
    return stated.pop() if len(stated) == 1 else ""


def _set_laterality(dataset: Dataset, sources: Sequence[Dataset]) -> None:
    """Write Laterality (General Series, Type 2C) as an element that is always present, empty when unknown.

    highdicom writes no Laterality; dciodvfy then reports "Missing attribute Type 2C Conditional Element=<Laterality>"
    as an Error, whereas an empty element is only warned about (it cannot know whether the body part is paired)."""
    dataset.add(DataElement(tag_for_keyword("Laterality"), "CS", _laterality(sources)))


def _redaction_source(sources: Sequence[Dataset]) -> Dataset:
    """One dataset whose identifying values are those of every source: the source itself for one instance, else a
    container whose sequence holds (shallow) copies of all of them, as the redaction looks through sequences (each
    instance has its own acquisition and content dates and times)."""
    if len(sources) == 1:
        return sources[0]
    container = Dataset()
    container.SourceImageSequence = [Dataset(dict(source.items())) for source in sources]
    return container


def _checked_series(
    sources: Sequence[Dataset], maps: np.ndarray, path: str | os.PathLike
) -> tuple[list[Dataset], np.ndarray]:
    """``sources`` as a list and ``maps`` as float32, after checking that they make one derived series.

    ``sources`` are single-frame instances of one series, or one enhanced multi-frame instance (a volume of frames,
    whose frame ``k + 1`` ``maps[k]`` is derived from).

    Raises:
        DerivedDicomError: ``sources`` is empty, mixes studies, series, pixel grids, pixel spacings or frames of
            reference, holds a multi-frame instance beside others or a repeated instance, or (several instances, or
            one multi-frame instance) one without plane geometry; ``maps`` is not one ``(Rows, Columns)`` frame per
            source (per frame of a multi-frame source) or has values outside [0, 1].
    """
    if isinstance(sources, Dataset) or len(sources) == 0:
        raise DerivedDicomError(path, "sources must be a non-empty sequence of the series' instances (datasets)")
    sources = list(sources)
    same = {
        "studies": {str(source.get("StudyInstanceUID", "")) for source in sources},
        "series": {str(source.get("SeriesInstanceUID", "")) for source in sources},
        "frames of reference": {str(source.get("FrameOfReferenceUID") or "") for source in sources},
        "pixel grids (Rows, Columns)": {(source.get("Rows"), source.get("Columns")) for source in sources},
        "pixel spacings": {nominal_pixel_spacing(source) for source in sources},
    }
    for what, values in same.items():
        if len(values) > 1:
            raise DerivedDicomError(
                path,
                f"the sources come from {len(values)} different {what}; one derived series is made from the "
                "instances of one source series",
            )
    if len({str(source.get("SOPInstanceUID", "")) for source in sources}) < len(sources):
        raise DerivedDicomError(path, "the sources list an instance more than once")
    for index, source in enumerate(sources):
        if _multiframe(source) and len(sources) > 1:
            raise DerivedDicomError(
                path, f"source {index} is a multi-frame instance; give single-frame instances, or it alone"
            )
        if (len(sources) > 1 or _multiframe(source)) and not _positioned(source):
            raise DerivedDicomError(
                path,
                f"source {index} has no valid plane geometry (ImagePositionPatient/ImageOrientationPatient, or for "
                "a multi-frame instance each frame's plane position, orientation and spacing, evenly spaced): a "
                "derived series of several frames needs the plane geometry of each",
            )
    frames = int(sources[0].NumberOfFrames) if _multiframe(sources[0]) else len(sources)
    expected = (frames, int(sources[0].Rows), int(sources[0].Columns))
    maps = np.asarray(maps)
    if maps.shape != expected or maps.dtype.kind not in "biuf":
        raise DerivedDicomError(
            path, f"maps must be real numbers of shape {expected} (one frame per source), got {maps.dtype} {maps.shape}"
        )
    maps = maps.astype(np.float32)
    if not np.isfinite(maps).all() or maps.min(initial=0.0) < 0 or maps.max(initial=0.0) > 1:
        raise DerivedDicomError(path, "maps must be finite values in [0, 1] (normalised saliency)")
    return sources, maps


def _derivation_headers(sources: Sequence[Dataset], path: str | os.PathLike) -> list[Dataset]:
    """The tolerant copy (:func:`_derivation_source`) of each source; the instances of a series without a frame of
    reference share one, derived from the series (each copy alone would get its own)."""
    headers = [_derivation_source(source, path) for source in sources]
    if len(headers) > 1 and not sources[0].get("FrameOfReferenceUID"):
        shared = generate_uid(entropy_srcs=[str(sources[0].SeriesInstanceUID), "frame of reference"])
        for header in headers:
            header.FrameOfReferenceUID = shared
    return headers


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
    instance_number: int = 1,
    referenced_frame: int | None = None,
) -> str:
    """Write an RGB overlay as a DICOM Secondary Capture in the source's study, referencing the source instance.

    Args:
        source: the source DICOM dataset (its patient, study and frame of reference are copied, tolerantly); for one
            frame of a multi-frame instance, :func:`frame_header`.
        rgb: ``(Rows, Columns, 3)`` uint8 overlay in the source's pixel grid.
        path: destination file (written atomically).
        series_instance_uid, sop_instance_uid: explicit UIDs (e.g. derived from the source, so that a redelivery
            after a crash is the same object, or one series UID for the overlays of a volume's slices); new random
            UIDs by default.
        instance_number: its number within its series (the slice's, for the overlays of a volume).
        referenced_frame: the frame of the source instance it shows (a multi-frame source), referenced beside the
            instance.

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
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            pixel_spacing=tuple(float(value) for value in spacing) if has_spacing else None,
            patient_orientation=orientation or ("L", "P"),
        )
        if orientation is None:
            image.PatientOrientation = None  # Type 2: unknown is stated as empty, not guessed
        _set_laterality(image, [source])
        image.SeriesDescription = series_description
        image.ImageComments = f"Saliency overlay from medxgan-monai. {NOT_FOR_CLINICAL_USE}."
        image.BurnedInAnnotation = "YES"
        image.SourceImageSequence = _source_reference(source, referenced_frame)
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
    """Write a float saliency map in [0, 1] as a DICOM Parametric Map derived from the source instance: the series
    Parametric Map (:func:`write_series_parametric_map`) of a series of one.

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

    Example::

        uid = write_saliency_parametric_map(pydicom.dcmread("slice.dcm", stop_before_pixels=True), saliency, "pm.dcm")
    """
    saliency = np.asarray(saliency)
    if saliency.shape != (source.Rows, source.Columns):
        raise DerivedDicomError(path, f"saliency must have shape {(source.Rows, source.Columns)}, got {saliency.shape}")
    return write_series_parametric_map(
        [source],
        saliency[np.newaxis],
        path,
        series_description,
        series_number,
        overwrite,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
    )


def write_series_parametric_map(
    sources: Sequence[Dataset],
    maps: np.ndarray,
    path: str | os.PathLike,
    series_description: str = f"medXGAN saliency - {NOT_FOR_CLINICAL_USE}",
    series_number: int = 9002,
    overwrite: bool = False,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> str:
    """Write the saliency maps of a source series, explained slice by slice, as one multi-frame Parametric Map.

    Frame ``k`` is ``maps[k]``, derived from ``sources[k]``: it carries that instance's plane position and references
    it (Derivation Image Sequence); the map is in the sources' study and frame of reference, with their pixel grid and
    orientation. Pixels are float32 with the real-world value mapping "SALIENCY" (no unit, [0, 1]) and a [0, 1] VOI
    window. The pairing of map, position and source holds whatever the order of ``sources``, but highdicom stores the
    frames sorted by position along column cosine x row cosine: sources sorted the usual way (the first lowest along
    row x column, as :func:`medxgan_monai.io.series.read_dicom_series` sorts them) come out in reverse file order.
    Readers go by each frame's reference and position, not by its number.

    Args:
        sources: the headers (pixels not needed) of single-frame instances of one series, same pixel grid, spacing,
            orientation and frame of reference; several instances need their plane geometry (one instance without it
            gets the nominal geometry of the module docstring).
        maps: ``(len(sources), Rows, Columns)`` saliency in [0, 1], stored as float32.
        path: destination file (written atomically).
        series_description, series_number: of the new series.
        overwrite: replace an existing ``path`` (never silently).
        series_instance_uid, sop_instance_uid: explicit UIDs (e.g. derived from the source series, so that a
            redelivery is the same object); new random UIDs by default.

    Returns:
        The new SOPInstanceUID.

    Raises:
        DerivedDicomError: invalid input (see :func:`_checked_series`) or the object cannot be built; the message
            names ``path`` and quotes no patient data.

    Example::

        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted_slice_files]
        uid = write_series_parametric_map(headers, np.stack(slice_maps), "series_pm.dcm")
    """
    sources, maps = _checked_series(sources, maps, path)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY",
        lut_explanation="medXGAN saliency (normalised to [0, 1])",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )

    def make() -> Dataset:
        nominal = not _positioned(sources[0])
        description = f"medXGAN saliency{', nominal plane geometry' if nominal else ''}, {NOT_FOR_CLINICAL_USE}"
        parametric_map = hd.pm.ParametricMap(
            source_images=_derivation_headers(sources, path),
            pixel_array=maps,
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
        _set_laterality(parametric_map, sources)
        parametric_map.SeriesDescription = series_description
        return parametric_map

    parametric_map = _build("Parametric Map", path, _redaction_source(sources), make)
    return _save(parametric_map, path, overwrite)


def write_series_segmentation(
    sources: Sequence[Dataset],
    maps: np.ndarray,
    path: str | os.PathLike,
    threshold: float = 0.5,
    series_description: str = f"medXGAN saliency region - {NOT_FOR_CLINICAL_USE}",
    series_number: int = 9003,
    overwrite: bool = False,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> str:
    """Write the region where a source series' saliency is at least ``threshold`` as one BINARY DICOM SEG.

    One segment, "medXGAN saliency above threshold" (SCT Morphologically abnormal structure / Lesion, algorithm type
    AUTOMATIC, algorithm medxgan-monai of this version in the Artificial Intelligence family, the threshold in the
    segment description and as an algorithm parameter). The mask is thresholded from the float32 maps, the values
    :func:`write_series_parametric_map` stores, so both objects agree. Frame ``k`` is the mask of ``maps[k]`` and
    references ``sources[k]``, as in :func:`write_series_parametric_map` (same geometry, study, frame of reference and
    frame order rule).

    Every frame is kept, empty ones included (highdicom would otherwise omit them): a slice without salient pixels
    is stated as such, and a series where no pixel passes the threshold is still a valid SEG, all of whose frames are
    empty.

    Args:
        sources: the headers of single-frame instances of one series (as :func:`write_series_parametric_map`).
        maps: ``(len(sources), Rows, Columns)`` saliency in [0, 1].
        path: destination file (written atomically).
        threshold: in (0, 1]; a pixel is in the segment when its saliency is at least this.
        series_description, series_number: of the new series.
        overwrite: replace an existing ``path`` (never silently).
        series_instance_uid, sop_instance_uid: explicit UIDs; new random UIDs by default.

    Returns:
        The new SOPInstanceUID.

    Raises:
        DerivedDicomError: invalid input (threshold outside (0, 1], see also :func:`_checked_series`) or the object
            cannot be built; the message names ``path`` and quotes no patient data.

    Example::

        uid = write_series_segmentation(headers, np.stack(slice_maps), "series_seg.dcm", threshold=0.6)
    """
    if not (isinstance(threshold, (int, float, np.floating)) and 0 < threshold <= 1):
        raise DerivedDicomError(path, f"threshold must be a number in (0, 1], got {threshold!r}")
    sources, maps = _checked_series(sources, maps, path)
    mask = maps >= np.float32(threshold)

    def make() -> Dataset:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=MANUFACTURER,
            family=codes.cid7162.ArtificialIntelligence,
            version=_version(),
            parameters={"threshold": f"{threshold:g}"},
        )
        segment = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="medXGAN saliency above threshold",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        segment.SegmentDescription = f"medXGAN saliency >= {threshold:g}, {NOT_FOR_CLINICAL_USE}"[:64]
        nominal = not _positioned(sources[0])
        description = f"medXGAN saliency region{', nominal plane geometry' if nominal else ''}, {NOT_FOR_CLINICAL_USE}"
        segmentation = hd.seg.Segmentation(
            source_images=_derivation_headers(sources, path),
            pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="medXGAN explainer",
            software_versions=_version(),
            device_serial_number="0",
            content_label="SALIENCY",
            content_description=description[:64],
            omit_empty_frames=False,
        )
        # no Laterality: a SEG states laterality per segment (its anatomic region), and dciodvfy rejects a General
        # Series Laterality next to a Segment Sequence (see the module docstring)
        if "Laterality" in segmentation:
            del segmentation.Laterality
        segmentation.SeriesDescription = series_description
        return segmentation

    segmentation = _build("segmentation", path, _redaction_source(sources), make)
    return _save(segmentation, path, overwrite)


def _version() -> str:
    from medxgan_monai import __version__

    return __version__
