"""Loading scans from NIfTI, single-file DICOM and PNG/JPEG, with errors that name the file and the problem."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform
from monai.utils import MetaKeys
from nibabel.openers import ImageOpener
from PIL import Image, ImageMode
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medxgan_monai.io.dicom import messages_redacted, nominal_pixel_spacing, redact_identifying_values
from medxgan_monai.io.nifti import SLICE_SOURCES, SOURCE_AFFINE, SOURCE_FORMAT, SOURCE_SHAPE, recorded_shape

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_PIXELS",
    "DicomSliceReader",
    "ImageReadError",
    "LoadScan",
    "LoadScand",
    "detect_format",
    "load_scan",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI2_HEADER_BYTES = 540


class ImageReadError(ValueError):
    """A scan could not be read; the message starts with the file path and says what is wrong."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"nifti"``, ``"dicom"`` or ``"bitmap"`` from the file name, or from the DICOM preamble.

    Raises:
        ImageReadError: the file is missing, empty, or of no supported format.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder; expected one image file (DICOM series folders are not supported)")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(BITMAP_SUFFIXES):
        return "bitmap"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    with open(path, "rb") as stream:
        preamble = stream.read(132)
    if preamble[128:132] == b"DICM":
        return "dicom"
    raise ImageReadError(path, "unsupported format; expected NIfTI (.nii, .nii.gz), DICOM (.dcm) or PNG/JPEG")


class DicomSliceReader(PydicomReader):
    """MONAI's ``PydicomReader`` for single-file DICOM images, with two fixes for projection radiographs.

    * ``MONOCHROME1`` images (high values displayed dark) are inverted so that bright always means high signal.
    * When ``ImagePositionPatient``/``ImageOrientationPatient`` are missing (typical for CR/DX), the affine uses
      ``PixelSpacing`` or, failing that, ``ImagerPixelSpacing`` (values <= 0 count as missing), instead of MONAI's
      fallback of 1 mm.

    Rescale slope and intercept are applied by ``PydicomReader``. The data keep MONAI's layout: the array is indexed
    [column, row] and the affine is RAS.

    Example::

        image = LoadImage(reader=DicomSliceReader(), image_only=True)("scan.dcm")
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("swap_ij", True)
        kwargs.setdefault("affine_lps_to_ras", True)
        super().__init__(**kwargs)

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        datasets = data if isinstance(data, list) else [data]
        if len(datasets) != 1 or isinstance(datasets[0], list):
            return super().get_data(data)
        ds = datasets[0]
        # MONAI copies every attribute into the metadata; pydicom logs the values it cannot convert
        with messages_redacted(ds):
            array, meta = super().get_data(data)
        if _is_palette_colour(ds):
            # the stored values are indices into the palette: the image is the colours they point to
            array = _apply_palette(array, ds)
        if array.ndim == 3:
            # colour samples are the last axis; LoadImage moves it first and LoadScan averages it to grey
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(array.shape[:-1])
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            array = _invert_monochrome1(array, ds)
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            affine = _affine_without_position(ds)
            meta[MetaKeys.AFFINE] = affine
            meta[MetaKeys.ORIGINAL_AFFINE] = affine.copy()
            meta["spacing"] = np.abs(np.diag(affine)[:2])
        return array, meta


def _is_palette_colour(ds) -> bool:
    return str(getattr(ds, "PhotometricInterpretation", "")).upper() == "PALETTE COLOR"


def _apply_palette(array: np.ndarray, ds) -> np.ndarray:
    """RGB of a PALETTE COLOR image in MONAI's [column, row] layout, through pydicom's ``apply_color_lut``."""
    indices = np.swapaxes(np.rint(array), 0, 1).astype(np.int32)  # back to DICOM's [row, column]
    return np.swapaxes(apply_color_lut(indices, ds), 0, 1)


def _invert_monochrome1(array: np.ndarray, ds) -> np.ndarray:
    """Invert within the value range the stored bits allow, mapped through the modality rescale."""
    bits = int(getattr(ds, "BitsStored", 16))
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        stored_low, stored_high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        stored_low, stored_high = 0, 2**bits - 1
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    low, high = sorted((stored_low * slope + intercept, stored_high * slope + intercept))
    return (low + high - array.astype(np.float64)).astype(np.float32)


def _frame_pixel_attributes(ds, frame: int) -> Dataset:
    """What maps one frame's stored values to modality values (Modality LUT or Rescale Slope and Intercept, Bits
    Stored, Pixel Representation): the instance's, with the Pixel Value Transformation of an enhanced multi-frame
    frame (its own, else the shared one) in place of the top-level rescale."""
    from medxgan_monai.io.series import frame_functional_item

    view = Dataset()
    for keyword in ("ModalityLUTSequence", "RescaleSlope", "RescaleIntercept", "BitsStored", "PixelRepresentation"):
        if keyword in ds:
            view[keyword] = ds[keyword]
    transformation = frame_functional_item(ds, frame, "PixelValueTransformationSequence")
    if transformation is not None and "RescaleSlope" in transformation and "RescaleIntercept" in transformation:
        view.RescaleSlope, view.RescaleIntercept = transformation.RescaleSlope, transformation.RescaleIntercept
    return view


def _affine_without_position(ds) -> np.ndarray:
    row_spacing, column_spacing = nominal_pixel_spacing(ds)
    # index i runs along a row (columns), j down the columns (rows); the patient axes are unknown, so LPS identity
    lps = np.diag([column_spacing, row_spacing, 1.0, 1.0])
    return RAS_FROM_LPS @ lps


_READERS = {"nifti": NibabelReader, "dicom": DicomSliceReader, "bitmap": PILReader}

#: default limit on the pixels of one image (8192 x 8192); larger files are rejected before their pixels are read
MAX_PIXELS = 8192 * 8192
#: default limit on the bytes one image decodes to, read from the header before any pixel is decoded: as much as the
#: largest image MAX_PIXELS allows takes as float32 (256 MiB). A small file can promise far more (a 510 KB .nii.gz of
#: zeros says 8192 x 8192 float64, 512 MiB), so the pixel count alone does not bound memory and time.
MAX_DECODED_BYTES = MAX_PIXELS * 4
#: a volume explained slice by slice may decode to this many times ``max_decoded_bytes`` (8 x 256 MiB = 2 GiB: a
#: 512 x 512 x 2048 float32 CT)
MAX_SLICES_PER_LIMIT = 8


@dataclass(frozen=True)
class _HeaderSize:
    """What the header promises: the array shape and the bytes decoding it takes (what a compressed file inflates to,
    header and extensions of a NIfTI file included)."""

    shape: tuple[int, ...]
    decoded_bytes: int
    layout: str  # for messages: the data type, samples or offset behind ``decoded_bytes``
    affine: np.ndarray | None = None  # NIfTI: the affine nibabel gives the image (its header's best affine)


def _nifti_header(path: str | os.PathLike):
    """The NIfTI-1 or NIfTI-2 header alone: nibabel's loader would first read every header extension into memory,
    up to the data offset the file claims."""
    with ImageOpener(path) as stream:  # decompresses .nii.gz on the fly, only as far as read
        block = stream.read(NIFTI2_HEADER_BYTES)
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        size = header_class.template_dtype.itemsize
        for byteorder in ("little", "big"):
            if len(block) >= size and int.from_bytes(block[:4], byteorder) == size:
                # only the fixed header: nothing follows in the buffer, so no extension is read
                return header_class.from_fileobj(io.BytesIO(block[:size]))
    return nib.load(path).header  # not a NIfTI header: nibabel's error names the problem


def _dicom_decoded_bytes(ds) -> tuple[int, str]:
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    if _is_palette_colour(ds):
        # decoded through the palette into three samples of up to 16 bits
        samples, bits = 3, max(bits, 16)
    layout = f"{frames} frame(s) x {samples} sample(s) x {bits} bits"
    return (rows * columns * samples * bits * frames + 7) // 8, layout


def _header_size(path: str | os.PathLike, kind: str) -> _HeaderSize:
    """The image's array shape and decoded size from its header alone (pixels not decoded); DICOM problems that no
    reader explains well (several frames, no pixel data) raise :class:`ImageReadError`."""
    if kind == "nifti":
        header = _nifti_header(path)
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        data_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        return _HeaderSize(shape, offset + data_bytes, f"{dtype.name} data at offset {offset}", affine)
    if kind == "bitmap":
        try:
            with Image.open(path) as picture:
                shape = (picture.height, picture.width)
                sample = np.dtype(ImageMode.getmode(picture.mode).typestr)
                bands = len(picture.getbands())
        except Image.DecompressionBombError as error:  # Pillow's own, far higher limit; its message is ours
            raise ImageReadError(path, f"image exceeds Pillow's decompression-bomb limit ({error})") from None
        decoded = shape[0] * shape[1] * bands * sample.itemsize
        return _HeaderSize(shape, decoded, f"mode {picture.mode}")
    ds = pydicom.dcmread(path, defer_size=1024, force=True)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop_class = ds.get("SOPClassUID", "unknown")
        raise ImageReadError(path, f"DICOM file has no pixel data (truncated, or not an image: SOP class {sop_class})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM with {frames} frames; expected one 2D image per file")
    decoded, layout = _dicom_decoded_bytes(ds)
    return _HeaderSize((int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), decoded, layout)


def _readable_header(path: str | os.PathLike):
    """The DICOM header without pixels, or ``None`` when even that cannot be read."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None


def _decoding_problem(path: str | os.PathLike, error: Exception) -> str | None:
    """A clear message when compressed DICOM pixel data cannot be decoded by any installed decoder."""
    if "decod" not in str(error).lower() and "decompress" not in str(error).lower():
        return None
    header = _readable_header(path)
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return None
    if not syntax.is_compressed:
        return None
    return (
        f"pixel data compressed as '{syntax.name}' ({syntax}) cannot be decoded by the installed decoders "
        "(pydicom, Pillow, GDCM, pyjpegls); decompress the file first, e.g. with dcmtk's dcmdjpeg or gdcmconv --raw"
    )


class LoadScan(LoadImage):
    """Load one scan as a channel-first ``MetaTensor``, choosing the reader from the file itself.

    Args:
        spatial_dims: expected number of spatial dimensions; trailing singleton dimensions beyond it are dropped
            (a NIfTI slice stored as ``(H, W, 1)`` loads as ``(1, H, W)``). ``None`` keeps the shape as read.
        grayscale: average colour channels (an RGB or RGBA PNG) into one channel.
        dtype: output data type.
        max_pixels: images with more pixels (read from the header, before any pixel is decoded) are rejected.
        max_decoded_bytes: images whose header promises more decoded bytes are rejected before decoding: NIfTI data
            offset + voxels x bytes per voxel (what a ``.nii.gz`` inflates to); DICOM Rows x Columns x SamplesPerPixel
            x BitsAllocated / 8 x frames (PALETTE COLOR: three 16-bit samples); PNG/JPEG width x height x bands x
            bytes per band. Default :data:`MAX_DECODED_BYTES` (256 MiB).

    DICOM: one frame per file; rescale slope/intercept applied, MONOCHROME1 inverted, colour averaged to grey; VOI LUT
    and window settings are display transforms and are not applied (the model sees modality values). Compressed
    transfer syntaxes decode when an installed decoder supports them (pydicom, Pillow, GDCM, pyjpegls).

    Every failure raises :class:`ImageReadError` naming the file and the problem.

    Example::

        image = LoadScan()("case_001.dcm")   # MetaTensor of shape (1, W, H) with a RAS affine
    """

    def __init__(
        self,
        spatial_dims: int | None = 2,
        grayscale: bool = True,
        dtype=np.float32,
        max_pixels: int = MAX_PIXELS,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
    ) -> None:
        super().__init__(reader=None, image_only=True, dtype=dtype, ensure_channel_first=True)
        self.spatial_dims = spatial_dims
        self.grayscale = grayscale
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes
        self._reader_cache: dict[str, ImageReader] = {}
        self._volume_cache: tuple | None = None
        self._multiframe_cache: tuple | None = None

    def _reader_for(self, kind: str) -> ImageReader:
        if kind not in self._reader_cache:
            self._reader_cache[kind] = _READERS[kind]()
        return self._reader_cache[kind]

    def __call__(self, filename, reader: ImageReader | None = None):  # type: ignore[override]
        if isinstance(filename, (list, tuple)):
            if len(filename) != 1:
                raise ImageReadError(str(filename), "expected one file per image")
            filename = filename[0]
        kind = detect_format(filename)
        try:
            header = _header_size(filename, kind)
            shape = header.shape
            extent = tuple(size for size in shape if size != 1)
            if kind == "nifti" and self.spatial_dims is not None and len(extent) > self.spatial_dims:
                # a 4D series would otherwise be read as a 3D image with channels
                raise ImageReadError(filename, f"expected a {self.spatial_dims}D image, got shape {shape}")
            # a volume loaded whole (a 3D model) has a volume's limits, as when it is explained slice by slice:
            # max_pixels per slice, max_decoded_bytes times MAX_SLICES_PER_LIMIT for the whole
            whole_volume = self.spatial_dims == 3 and len(shape) >= 3
            if int(np.prod(shape[:2] if whole_volume else shape, dtype=np.int64)) > self.max_pixels:
                raise ImageReadError(filename, f"image of shape {shape} exceeds the limit of {self.max_pixels} pixels")
            byte_limit = self.max_decoded_bytes * (MAX_SLICES_PER_LIMIT if whole_volume else 1)
            if header.decoded_bytes > byte_limit:
                raise ImageReadError(
                    filename,
                    f"image of shape {shape} ({header.layout}) decodes to {header.decoded_bytes} bytes, over the limit "
                    f"of {byte_limit} bytes",
                )
            image = super().__call__(filename, reader=reader or self._reader_for(kind))
        except ImageReadError:
            raise
        except Exception as error:  # the readers raise many types; the user needs the file and the reason
            problem = (kind == "dicom" and _decoding_problem(filename, error)) or (
                f"cannot read as {kind}: {type(error).__name__}: {error}"
            )
            if kind != "dicom":
                raise ImageReadError(filename, problem) from error
            # pydicom's messages quote the values they reject: ours is redacted, and the original error is dropped
            # (raised below, outside this handler, so that it is not even the implicit context of a traceback)
            problem = redact_identifying_values(problem, _readable_header(filename))
        else:
            return self._with_source_geometry(self._conform(image, filename), kind, header)
        raise ImageReadError(filename, problem)

    def load_slice(self, filename, axis: int, index: int) -> MetaTensor:
        """Slice ``index`` along ``axis`` of a 3D NIfTI volume, as a 2D image ``(1, a, b)`` (the two other axes in
        their order). Its metadata record the slice's own affine, and as the geometry its outputs are written in
        (:func:`~medxgan_monai.io.nifti.output_geometry`), the volume's affine and shape: slices are written back
        into the volume. The volume read last is kept, so slice after slice reads the file once.

        Raises:
            ImageReadError: the file cannot be read as a 3D volume within the size limits (``max_pixels`` applies to
                one slice, ``max_decoded_bytes`` to the volume), the index is out of range, or a value is not finite.
        """
        filename = str(filename)
        volume, affine = self._volume(filename)
        if not 0 <= axis < 3 or not 0 <= index < volume.shape[axis]:
            raise ImageReadError(filename, f"no slice {index} along axis {axis} of a volume of shape {volume.shape}")
        plane = np.take(volume, index, axis=axis)
        if not np.isfinite(plane).all():
            raise ImageReadError(filename, f"slice {index} contains NaN or infinite values")
        in_plane = [a for a in range(3) if a != axis]
        slice_affine = np.eye(4)
        slice_affine[:3, :3] = affine[:3, [*in_plane, axis]]
        slice_affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * index
        meta = {
            "filename_or_obj": filename,
            MetaKeys.SPATIAL_SHAPE: np.asarray(plane.shape),
            MetaKeys.ORIGINAL_AFFINE: slice_affine.copy(),
            SOURCE_FORMAT: "nifti",
            SOURCE_SHAPE: recorded_shape(volume.shape),
            SOURCE_AFFINE: affine.copy(),
        }
        return MetaTensor(torch.as_tensor(plane[None], dtype=torch.float32), affine=slice_affine, meta=meta)

    def _volume(self, filename: str) -> tuple[np.ndarray, np.ndarray]:
        stamp = (filename, os.stat(filename).st_mtime_ns)
        if self._volume_cache is not None and self._volume_cache[0] == stamp:
            return self._volume_cache[1], self._volume_cache[2]
        self._volume_cache = None
        try:
            header = _header_size(filename, "nifti")
            if len(header.shape) != 3:
                raise ImageReadError(filename, f"expected a 3D volume, got shape {header.shape}")
            if int(np.prod(header.shape[:2], dtype=np.int64)) > self.max_pixels:
                raise ImageReadError(filename, f"slices of shape {header.shape} exceed {self.max_pixels} pixels")
            if header.decoded_bytes > self.max_decoded_bytes * MAX_SLICES_PER_LIMIT:
                raise ImageReadError(
                    filename,
                    f"volume of shape {header.shape} ({header.layout}) decodes to {header.decoded_bytes} bytes, over "
                    f"the limit of {self.max_decoded_bytes * MAX_SLICES_PER_LIMIT} bytes",
                )
            volume = np.asarray(nib.load(filename).get_fdata(dtype=np.float32))
        except ImageReadError:
            raise
        except Exception as error:  # nibabel raises many types; the user needs the file and the reason
            raise ImageReadError(filename, f"cannot read as a NIfTI volume: {type(error).__name__}: {error}") from error
        self._volume_cache = (stamp, volume, header.affine)
        return volume, header.affine

    def load_frame(self, filename, index: int) -> MetaTensor:
        """Slice ``index`` of an enhanced multi-frame DICOM instance, counted along the slice normal (the order of
        :func:`~medxgan_monai.io.series.read_dicom_multiframe`, not the frame numbers), as a 2D image ``(1, W, H)``
        loaded like a single-frame DICOM slice: the frame's own affine (from its functional groups), its modality
        rescale (the frame's, else the shared Pixel Value Transformation, else the top-level Rescale Slope and
        Intercept) applied, MONOCHROME1 inverted, colour averaged to grey. The instance read last is kept, so slice
        after slice decodes the file once.

        Raises:
            ImageReadError: the file is not a volume of frames (see ``read_dicom_multiframe``), is over the size
                limits (``max_pixels`` applies to one frame, ``max_decoded_bytes`` to the instance, as to a volume),
                cannot be decoded, the index is out of range, or a value is not finite.
        """
        filename = str(filename)
        frames, header, order, affines = self._multiframe(filename)
        if not 0 <= index < len(order):
            raise ImageReadError(filename, f"no slice {index} in a volume of {len(order)} frames")
        frame = order[index]
        pixels = np.swapaxes(frames[frame - 1], 0, 1)  # DICOM (rows, columns) to MONAI's (columns, rows)
        if _is_palette_colour(header):
            pixels = _apply_palette(pixels, header)
        view = _frame_pixel_attributes(header, frame)
        pixels = np.asarray(apply_modality_lut(pixels, view), dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[..., :3].mean(axis=-1)
        if str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            pixels = _invert_monochrome1(pixels, view)
        if not np.isfinite(pixels).all():
            raise ImageReadError(filename, f"frame {frame} contains NaN or infinite values")
        affine = affines[frame - 1]
        meta = {
            "filename_or_obj": filename,
            MetaKeys.SPATIAL_SHAPE: np.asarray(pixels.shape),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            SOURCE_FORMAT: "dicom",
            SOURCE_SHAPE: recorded_shape(pixels.shape),
            SOURCE_AFFINE: affine.copy(),
        }
        return MetaTensor(torch.as_tensor(pixels[None], dtype=torch.float32), affine=affine.copy(), meta=meta)

    def load_dicom_volume(self, source, files: list[str] | None = None) -> MetaTensor:
        """A DICOM volume loaded whole, for a 3D model: the single-frame instances ``files`` of one series (held in
        the folder ``source``), or without ``files`` the enhanced multi-frame instance ``source``, as ``(1, columns,
        rows, slices)``, slices sorted along the normal (:func:`~medxgan_monai.io.series.read_dicom_series`,
        :func:`~medxgan_monai.io.series.read_dicom_multiframe`). Each slice is loaded as a 2D slice would be
        (modality rescale, MONOCHROME1, colour, size limits per slice); the volume's affine is the series' (the one
        its outputs, and a mask in its grid, are written with), and its metadata records its slices' source files
        (:data:`~medxgan_monai.io.nifti.SLICE_SOURCES`) for the derived DICOM series.

        Raises:
            ImageReadError: the instances are not one volume (the series reader's problem), the volume would decode
                to more than ``max_decoded_bytes`` times :data:`MAX_SLICES_PER_LIMIT` bytes as float32 (checked
                from the headers, before decoding), a slice cannot be read, or the slices differ in size.
        """
        from medxgan_monai.io.series import SeriesError, read_dicom_multiframe, read_dicom_series

        source = str(source)
        if files is None and os.path.isdir(source):
            raise ImageReadError(source, "a folder is loaded as a DICOM series only with its instances' files")
        try:
            if files is None:
                volume = read_dicom_multiframe(source)
                paths = [source] * volume.shape[2]
            else:
                volume = read_dicom_series(files, origin=source)
                paths = [str(path) for path in volume.paths]
        except SeriesError as error:
            raise ImageReadError(source, error.problem) from None
        # checked from the headers, before any slice is decoded: the volume as float32, within a volume's limit
        decoded = int(np.prod(volume.shape, dtype=np.int64)) * 4
        if decoded > self.max_decoded_bytes * MAX_SLICES_PER_LIMIT:
            raise ImageReadError(
                source,
                f"volume of shape {tuple(volume.shape)} decodes to {decoded} bytes, over the limit of "
                f"{self.max_decoded_bytes * MAX_SLICES_PER_LIMIT} bytes",
            )
        slice_loader = LoadScan(
            spatial_dims=2,
            grayscale=self.grayscale,
            max_pixels=self.max_pixels,
            max_decoded_bytes=self.max_decoded_bytes,
        )
        if files is None:
            pieces = [self.load_frame(source, index) for index in range(len(paths))]
        else:
            pieces = [slice_loader(path) for path in paths]
        shapes = {tuple(piece.shape) for piece in pieces}
        if len(shapes) != 1:
            raise ImageReadError(source, f"its slices differ in size: {sorted(shapes)}")
        stacked = torch.stack([piece.as_tensor() for piece in pieces], dim=-1).float()
        affine = np.asarray(volume.affine, dtype=np.float64)
        meta = {
            "filename_or_obj": source,
            MetaKeys.SPATIAL_SHAPE: np.asarray(stacked.shape[1:]),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            SOURCE_FORMAT: "dicom",
            SOURCE_SHAPE: recorded_shape(stacked.shape[1:]),
            SOURCE_AFFINE: affine.copy(),
            SLICE_SOURCES: json.dumps(paths),
        }
        return MetaTensor(stacked, affine=torch.as_tensor(affine), meta=meta)

    def _multiframe(self, filename: str) -> tuple[np.ndarray, pydicom.Dataset, tuple[int, ...], list[np.ndarray]]:
        """The decoded frames (frame-number order), the header, the frame number of each slice and each frame's
        affine of a multi-frame instance, read once per file version."""
        from medxgan_monai.io.series import SeriesError, frame_affines, read_dicom_multiframe

        stamp = (filename, os.stat(filename).st_mtime_ns)
        if self._multiframe_cache is not None and self._multiframe_cache[0] == stamp:
            return self._multiframe_cache[1]
        self._multiframe_cache = None
        header = _readable_header(filename)
        if header is None:
            raise ImageReadError(filename, "cannot read as DICOM")
        try:
            decoded, layout = _dicom_decoded_bytes(header)
        except (TypeError, ValueError):  # the values are not quoted: they are untrusted
            raise ImageReadError(filename, "Rows, Columns, frames, samples or bits are not numbers") from None
        if decoded > self.max_decoded_bytes * MAX_SLICES_PER_LIMIT:
            raise ImageReadError(
                filename,
                f"multi-frame instance ({layout}) decodes to {decoded} bytes, over the limit of "
                f"{self.max_decoded_bytes * MAX_SLICES_PER_LIMIT} bytes",
            )
        try:
            volume = read_dicom_multiframe(header, origin=filename)
        except SeriesError as error:
            raise ImageReadError(filename, error.problem) from None
        if volume.shape[0] * volume.shape[1] > self.max_pixels:
            raise ImageReadError(filename, f"frames of {volume.shape[:2]} exceed {self.max_pixels} pixels")
        try:
            dataset = pydicom.dcmread(filename, force=True)
            with messages_redacted(dataset):
                frames = dataset.pixel_array
        except Exception as error:
            problem = _decoding_problem(filename, error) or f"cannot decode its frames: {type(error).__name__}: {error}"
            problem = redact_identifying_values(problem, header)
        else:
            if frames.shape[0] != len(volume.frames):
                raise ImageReadError(
                    filename, f"decoded {frames.shape[0]} frames, its header says {len(volume.frames)}"
                )
            self._multiframe_cache = (stamp, (frames, header, volume.frames, frame_affines(header)))
            return self._multiframe_cache[1]
        raise ImageReadError(filename, problem)

    @staticmethod
    def _with_source_geometry(image: MetaTensor, kind: str, header: _HeaderSize) -> MetaTensor:
        """Record, in the image's metadata, the geometry its outputs are written in (see
        :func:`medxgan_monai.io.nifti.output_geometry`), so that writers never re-open the source."""
        image.meta[SOURCE_FORMAT] = kind
        image.meta[SOURCE_SHAPE] = recorded_shape(header.shape)
        if kind == "nifti":
            image.meta[SOURCE_AFFINE] = header.affine
        elif kind == "bitmap":
            # PNG/JPEG carry no geometry: one unit per pixel, i along a row and j down the columns
            image.meta[SOURCE_AFFINE] = np.eye(4)
        else:
            image.meta[SOURCE_AFFINE] = np.asarray(image.meta[MetaKeys.ORIGINAL_AFFINE], dtype=np.float64)
        return image

    def _conform(self, image: MetaTensor, filename) -> MetaTensor:
        if self.grayscale and image.shape[0] > 1:
            channels = image.shape[0]
            if channels in (3, 4):
                image = image[:3].mean(dim=0, keepdim=True)
            else:
                raise ImageReadError(filename, f"has {channels} channels; expected 1 (or RGB/RGBA)")
        if self.spatial_dims is not None:
            while image.ndim - 1 > self.spatial_dims and image.shape[-1] == 1:
                image = image.squeeze(-1)
            if image.ndim - 1 != self.spatial_dims:
                raise ImageReadError(
                    filename,
                    f"expected a {self.spatial_dims}D image, got spatial shape {tuple(image.shape[1:])}",
                )
        if not torch.isfinite(image).all():
            raise ImageReadError(filename, "contains NaN or infinite values")
        return image


class LoadScand(MapTransform):
    """Dictionary version of :class:`LoadScan`; the reader is chosen per file.

    Example::

        LoadScand(keys=["image", "mask"])({"image": "a.nii.gz", "mask": "a_mask.nii.gz"})
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = 2,
        grayscale: bool = True,
        dtype=np.float32,
        max_pixels: int = MAX_PIXELS,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadScan(
            spatial_dims=spatial_dims,
            grayscale=grayscale,
            dtype=dtype,
            max_pixels=max_pixels,
            max_decoded_bytes=max_decoded_bytes,
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        # a slice of a NIfTI volume or of a multi-frame DICOM instance (see medxgan_monai.data.volumes); a DICOM
        # series' slice is its own file
        index, axis = int(d.get("slice", -1)), int(d.get("slice_axis", -1))
        # a DICOM volume loaded whole for a 3D model; its file list is consumed here (lists of different lengths
        # would not collate into a batch)
        files = d.pop("files", None)
        for key in self.key_iterator(d):
            kind = detect_format(d[key]) if index >= 0 else None
            if self.loader.spatial_dims == 3 and _is_dicom_volume(d[key], d.get("volume")):
                d[key] = self.loader.load_dicom_volume(d[key], files if os.path.isdir(d[key]) else None)
            elif kind == "nifti":
                d[key] = self.loader.load_slice(d[key], axis, index)
            elif kind == "dicom" and str(d[key]) == str(d.get("volume_source", "")):
                d[key] = self.loader.load_frame(d[key], index)
            else:
                d[key] = self.loader(d[key])
        return d


def _is_dicom_volume(path, volume: str | None) -> bool:
    """Whether ``path`` is an item's DICOM volume (:mod:`medxgan_monai.data.volumes`): the folder of a series, or an
    enhanced multi-frame instance; not, for one, the NIfTI mask beside it."""
    if volume == "dicom_series":
        return os.path.isdir(path)
    return volume == "dicom_multiframe" and detect_format(path) == "dicom"


def load_scan(path: str | os.PathLike, spatial_dims: int | None = 2) -> MetaTensor:
    """Convenience wrapper: ``LoadScan(spatial_dims)(path)``."""
    return LoadScan(spatial_dims=spatial_dims)(str(path))
