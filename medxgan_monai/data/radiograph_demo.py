"""Deterministic chest radiograph demo benchmark: 2D crops of a real PA chest radiograph with synthetic lung nodules
and exact masks, a second anatomy and modality beside the MNI152 brain MR demo (:mod:`medxgan_monai.data.demo`).

Anatomy. The source is the uncompressed chest CR of the pydicom-data package (``RG1_UNCR.dcm``: a PA chest on a
Philips Thoravision selenium drum, 1955 x 1841 pixels, MONOCHROME1, 15 bits), so nothing is downloaded; the package
also ships the same radiograph JPEG 2000-compressed (``RG1_J2K*``), which is not used. Its ``PixelSpacing`` is 0 and it
has no ``ImagerPixelSpacing``; the spacing is taken from the collimator edges instead (368 mm over 1841 columns, 392 mm
over 1955 rows: 0.2 mm, the detector's pitch). The radiograph shows several round opacities of its own (it appears
to show nodular lung disease): they are part of every sample's anatomy, of both classes, and never in a mask, so a
classifier must find the *added* nodules, not round opacities as such. Each sample is a random crop of the
thorax: a ``field_of_view_mm`` square about the lung fields' centroid, shifted by up to ``max_shift_mm``, rotated by up
to ``max_rotation_deg``, scaled (patient size and magnification; the affine records the resulting spacing) and warped
by a smooth elastic field, resampled to ``size`` x ``size`` from an anti-aliased 1 mm copy of the source.

Nodules. The region lesions may occupy is the lung fields: the smoothed attenuation below a threshold inside the body
(away from its edge, which removes the low-attenuation soft tissue above the shoulders), the two largest components
with their holes filled (the native opacities are lung too), resampled with the image. 1-3 nodules per positive
sample are drawn with :func:`~medxgan_monai.data.lesions.draw_lesions`, always brighter than the lung (a solid nodule
attenuates more than aerated lung) and without a dark core. Their area is 0.4-2% of the field of view each (at the
default 260 mm, about 18-41 mm across: nodules and small masses; at 64 pixels 4.6-10 pixels across, small but
resolvable), their contrast 0.2-0.5 of the mean lung intensity: at the low end about a rib crossing or a vessel (and
partly hidden by ribs), at the high end as obvious as the native opacities. Checked by eye on a montage; lower
contrast (0.12-0.35) made most nodules invisible at 64 pixels. The MNI demo's larger, two-polarity lesions (3-15% of
the field, 0.2-0.6) would make the task trivial here and are not what a chest radiograph shows.

Intensities. The radiograph is inverted (MONOCHROME1: bright = dense) and normalised with one constant pair for the
whole dataset (its 0.5th and 99.5th percentiles map to 0 and 1) *before* nodules are drawn; images are stored on a
fixed integer scale. Per-image rescaling after lesion insertion lets global brightness predict the label (see
:mod:`medxgan_monai.data.demo`); the manifest records the same leakage check (``leakage_check_auc``). Nodules only
add intensity, so the positive class is brighter on average by a real but tiny amount (well under the spread of the
acquisition gain). Acquisition variation is equal for both classes and X-ray-like: a processing gamma, a gain, a
smooth multiplicative field (heel effect, scatter) and quantum noise (Gaussian with a variance proportional to the
signal, the Poisson limit); no Rician noise, which is MR's.

Every sample draws its anatomy, its nodules and its acquisition from three generators of its own, seeded with (seed,
split, index): rendering a sample with and without nodules gives the same image outside the mask. No DICOM copies are
written: the package's DICOM writer is an MR writer, and a CR/DX object is not produced here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
from scipy import ndimage

from medxgan_monai.data.demo import (
    INTENSITY_SCALE,  # stored value of normalised intensity 1 (here the radiograph's 99.5th percentile)
    SPLITS,
    _image_statistics,
    _write_json,
    benchmark_manifest,
    split_labels,
    write_sample_nifti,
)
from medxgan_monai.data.lesions import LesionSettings, acquisition_contrast, draw_lesions, elastic_displacement
from medxgan_monai.io import atomic_replace_dir
from medxgan_monai.io.dicom import _positive_spacing

__all__ = ["CHEST_NODULES", "RadiographDataSettings", "build_radiograph_dataset", "render_radiograph_sample"]

logger = logging.getLogger(__name__)

#: the radiograph inside pydicom-data that the anatomy comes from (uncompressed, so it decodes without plugins)
SOURCE_FILE = "RG1_UNCR.dcm"
#: spacing (mm) of the anti-aliased copy of the source that samples are resampled from
WORKING_SPACING_MM = 1.0

#: lung nodules: brighter than lung, 0.4-2% of the field of view each, 0.2-0.5 of the mean lung intensity
CHEST_NODULES = LesionSettings(
    area_fraction=(0.004, 0.02),
    max_lesions=3,
    contrast=(0.2, 0.5),
    hyper_probability=1.0,
    necrotic_core_probability=0.0,
)


@dataclass(frozen=True)
class RadiographDataSettings:
    """Everything that determines the chest radiograph benchmark; the same settings and seed give identical files.

    Attributes:
        size: image width and height in pixels.
        seed: master seed; each sample draws from its own generators seeded with (seed, split, index).
        n_train, n_val, n_test: number of samples per split (half positive, rounded down).
        field_of_view_mm: side of the square crop before the random scale; nominal spacing field_of_view_mm / size.
        max_shift_mm: the crop centre moves up to this far (each axis) from the lung fields' centroid.
        max_rotation_deg: in-plane rotation of the crop.
        scale_range: crop size factor (patient size, magnification); the affine's spacing includes it.
        elastic_mm: amplitude of the smooth elastic warp.
        gamma_range, gain_range: processing gamma and gain.
        bias_field_strength: standard deviation of the log of the smooth multiplicative field.
        noise_range: quantum noise level (standard deviation at normalised intensity 1).
        lesions: nodule shape and contrast ranges (contrast relative to the mean lung intensity).
    """

    size: int = 64
    seed: int = 0
    n_train: int = 2000
    n_val: int = 300
    n_test: int = 500
    field_of_view_mm: float = 260.0
    max_shift_mm: float = 30.0
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    elastic_mm: float = 4.0
    gamma_range: tuple[float, float] = (0.8, 1.25)
    gain_range: tuple[float, float] = (0.85, 1.15)
    bias_field_strength: float = 0.1
    noise_range: tuple[float, float] = (0.01, 0.03)
    lesions: LesionSettings = field(default_factory=lambda: CHEST_NODULES)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16, not {self.size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, not {self.scale_range}")

    @property
    def pixel_spacing_mm(self) -> float:
        """Nominal pixel spacing, before the sample's random scale."""
        return self.field_of_view_mm / self.size


def source_pixel_spacing(dataset) -> tuple[float, float]:
    """(row, column) spacing in mm of a projection radiograph: ``PixelSpacing``, else ``ImagerPixelSpacing``, else the
    collimator's extent (mm at the detector) over the pixel count.

    Raises:
        ValueError: none of them is there or positive.
    """
    spacing = _positive_spacing(dataset.get("PixelSpacing")) or _positive_spacing(dataset.get("ImagerPixelSpacing"))
    if spacing:
        return spacing
    edges = ("CollimatorUpperHorizontalEdge", "CollimatorLowerHorizontalEdge")
    edges += ("CollimatorLeftVerticalEdge", "CollimatorRightVerticalEdge")
    if all(name in dataset for name in edges):
        upper, lower, left, right = (float(dataset[name].value) for name in edges)
        spacing = _positive_spacing(
            (round((lower - upper) / dataset.Rows, 2), round((right - left) / dataset.Columns, 2))
        )
        if spacing:
            return spacing
    raise ValueError("the radiograph has no positive PixelSpacing, ImagerPixelSpacing or collimator edges")


class ChestRadiograph:
    """The source radiograph as normalised attenuation on a 1 mm grid, anti-aliased for ``output_spacing_mm``, and
    its lung fields.

    Args:
        output_spacing_mm: the spacing samples are rendered at; the copy is blurred so that resampling to it does not
            alias.

    Raises:
        FileNotFoundError: pydicom-data is not installed (it is in the ``dev`` extra).
    """

    def __init__(self, output_spacing_mm: float) -> None:
        import pydicom
        from pydicom.data import get_testdata_file

        path = get_testdata_file(SOURCE_FILE, download=False)  # the installed package only, never the network
        if path is None:
            raise FileNotFoundError(
                f"{SOURCE_FILE}: not found; the chest radiograph demo needs the pydicom-data package "
                "(pip install pydicom-data, part of the 'dev' extra)"
            )
        dataset = pydicom.dcmread(path)
        raw = dataset.pixel_array.astype(np.float64)
        if dataset.PhotometricInterpretation == "MONOCHROME1":  # low values are bright: invert to attenuation
            raw = raw.max() - raw
        row_spacing, column_spacing = source_pixel_spacing(dataset)
        self.source_spacing_mm = (row_spacing, column_spacing)
        factors = (max(1, round(WORKING_SPACING_MM / row_spacing)), max(1, round(WORKING_SPACING_MM / column_spacing)))
        rows, cols = raw.shape[0] // factors[0], raw.shape[1] // factors[1]
        blocks = raw[: rows * factors[0], : cols * factors[1]].reshape(rows, factors[0], cols, factors[1])
        working = blocks.mean(axis=(1, 3))
        self.working_spacing_mm = (row_spacing * factors[0], column_spacing * factors[1])
        # one constant pair for the whole dataset, applied before any nodule exists
        low, high = np.percentile(working, [0.5, 99.5])
        attenuation = (working - low) / (high - low)
        self.lungs = _lung_fields(attenuation, self.working_spacing_mm)
        sigma = [0.4 * output_spacing_mm / s for s in self.working_spacing_mm]
        self.attenuation = ndimage.gaussian_filter(attenuation, sigma, mode="nearest").astype(np.float32)
        self.lung_centroid_mm = np.array(ndimage.center_of_mass(self.lungs)) * self.working_spacing_mm
        self.source = (
            f"pydicom-data {_package_version()}: {SOURCE_FILE} ({dataset.Modality}, {dataset.BodyPartExamined})"
        )

    def sample(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Attenuation and lung fields at ``points_mm`` (2, ...): (row, column) millimetres in the source."""
        coordinates = points_mm / np.reshape(self.working_spacing_mm, (2, *([1] * (points_mm.ndim - 1))))
        image = ndimage.map_coordinates(self.attenuation, coordinates, order=1, mode="nearest")
        lungs = ndimage.map_coordinates(self.lungs.astype(np.float32), coordinates, order=1, mode="constant") > 0.5
        return image.astype(np.float64), lungs


def _lung_fields(attenuation: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """Lung fields of a PA radiograph (bright = dense): smoothed attenuation below 0.8 at least 25 mm inside the body
    (attenuation above 0.3), the two largest components with holes filled, opened with a 12 mm disc."""
    smooth = ndimage.gaussian_filter(attenuation, [6.0 / s for s in spacing_mm])
    body = ndimage.binary_fill_holes(smooth > 0.3)
    # outside the detector counts as outside the body (the body reaches the top and bottom edges)
    inside = ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing_mm)[1:-1, 1:-1] >= 25.0
    labels, count = ndimage.label((smooth < 0.8) & inside)
    if count < 2:
        raise ValueError(f"{SOURCE_FILE}: found {count} lung field(s), expected two")
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=range(1, count + 1))
    lungs = ndimage.binary_fill_holes(np.isin(labels, np.argsort(sizes)[-2:] + 1))
    radius = 12.0 / np.array(spacing_mm)
    r, c = np.ogrid[-int(radius[0]) : int(radius[0]) + 1, -int(radius[1]) : int(radius[1]) + 1]
    return ndimage.binary_opening(lungs, (r / radius[0]) ** 2 + (c / radius[1]) ** 2 <= 1)


def _package_version() -> str:
    try:
        return metadata.version("pydicom-data")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def radiograph_affine(pixel_spacing_mm: float) -> np.ndarray:
    """RAS affine of a stored sample, indexed [i, j] = [column, row]: the geometry the package's loader gives a
    projection radiograph without patient position (``transforms/io.py``), so both read the same way."""
    return np.diag([-pixel_spacing_mm, -pixel_spacing_mm, 1.0, 1.0])


def sample_generators(seed: int, split: str, index: int) -> tuple[np.random.Generator, ...]:
    """The (anatomy, nodules, acquisition) generators of one sample."""
    children = np.random.SeedSequence([seed, SPLITS.index(split), index]).spawn(3)
    return tuple(np.random.default_rng(child) for child in children)


def render_radiograph_sample(
    source: ChestRadiograph,
    settings: RadiographDataSettings,
    generators: tuple[np.random.Generator, ...],
    positive: bool,
) -> dict:
    """Render one crop: the stored integer image and its mask (both [column, row]), the lung fields, the affine, the
    pixel spacing and the nodule records.

    ``generators`` are (anatomy, nodules, acquisition), e.g. :func:`sample_generators`; the same generators
    rendered with ``positive`` True and False give images that differ only inside the mask.

    Example::

        source = ChestRadiograph(RadiographDataSettings().pixel_spacing_mm)
        sample = render_radiograph_sample(source, RadiographDataSettings(), sample_generators(0, "test", 3), True)
    """
    anatomy_rng, nodule_rng, acquisition_rng = generators
    n = settings.size
    scale = anatomy_rng.uniform(*settings.scale_range)
    spacing = settings.pixel_spacing_mm * scale
    angle = np.deg2rad(anatomy_rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg))
    centre = source.lung_centroid_mm + anatomy_rng.uniform(-settings.max_shift_mm, settings.max_shift_mm, size=2)
    offsets = (np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij")) - (n - 1) / 2) * spacing
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = np.tensordot(rotation, offsets, axes=1) + centre.reshape(2, 1, 1)
    points += elastic_displacement(anatomy_rng, n, settings.elastic_mm)
    anatomy, lungs = source.sample(points)

    records: list[dict] = []
    mask = np.zeros((n, n), dtype=bool)
    if positive:
        anatomy, mask, records = draw_lesions(anatomy, lungs, nodule_rng, settings.lesions)

    # acquisition: gamma, gain, a smooth multiplicative field and quantum noise, equal for both classes
    image = acquisition_contrast(
        anatomy, acquisition_rng, settings.gamma_range, settings.gain_range, settings.bias_field_strength
    )
    noise_level = acquisition_rng.uniform(*settings.noise_range)
    image += noise_level * np.sqrt(image) * acquisition_rng.standard_normal(image.shape)
    stored = np.clip(np.round(image * INTENSITY_SCALE), 0, 4095).astype(np.int16)
    # rendered as [row, column] like the radiograph; stored [column, row] like every 2D image of the package
    return {
        "image": stored.T.copy(),
        "mask": mask.T.astype(np.uint8),
        "lungs": lungs.T.copy(),
        "affine": radiograph_affine(spacing),
        "pixel_spacing_mm": float(spacing),
        "lesions": records,
    }


def build_radiograph_dataset(
    out_dir: str | os.PathLike, settings: RadiographDataSettings | None = None, overwrite: bool = False
) -> dict:
    """Build the chest radiograph benchmark into ``out_dir`` and return its manifest.

    Writes ``images/*.nii.gz``, ``masks/*.nii.gz``, ``datalist.json`` (MONAI's decathlon style, sections training,
    validation and test, paths relative to the datalist) and ``manifest.json`` (source, settings, counts, nodule
    records and the leakage check), the layout of :func:`~medxgan_monai.data.build_demo_dataset` without its DICOM
    copies. The folder appears only when complete; an existing folder is replaced only with ``overwrite=True``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: pydicom-data is not installed.

    Example::

        manifest = build_radiograph_dataset("data/chest_cr", RadiographDataSettings(n_train=200, n_val=50, n_test=50))
    """
    settings = settings or RadiographDataSettings()
    start = time.perf_counter()
    source = ChestRadiograph(settings.pixel_spacing_mm)
    counts = {"training": settings.n_train, "validation": settings.n_val, "test": settings.n_test}
    datalist: dict[str, list] = {split: [] for split in SPLITS}
    lesion_records = {}
    training_statistics: list[dict[str, float]] = []
    with atomic_replace_dir(out_dir, overwrite=overwrite) as staging:
        for folder in ("images", "masks"):
            (staging / folder).mkdir()
        for split in SPLITS:
            for index, label in enumerate(split_labels(settings.seed, split, counts[split])):
                stem = f"{split}_{index:05d}"
                generators = sample_generators(settings.seed, split, index)
                sample = render_radiograph_sample(source, settings, generators, bool(label))
                datalist[split].append(write_sample_nifti(staging, stem, sample, int(label)))
                if split == "training":
                    training_statistics.append(_image_statistics(sample["image"]))
                if sample["lesions"]:
                    lesion_records[stem] = sample["lesions"]
        _write_json(staging / "datalist.json", datalist)
        description = (
            "medxgan-monai chest radiograph demo benchmark: crops of a real PA chest CR with synthetic nodules"
        )
        provenance = {"anatomy_source": source.source, "source_pixel_spacing_mm": list(source.source_spacing_mm)}
        manifest = benchmark_manifest(description, provenance, settings, datalist, training_statistics, lesion_records)
        manifest["build_seconds"] = round(time.perf_counter() - start, 2)
        _write_json(staging / "manifest.json", manifest)
    logger.info("chest radiograph demo data written to %s in %.1f s", out_dir, manifest["build_seconds"])
    return manifest
