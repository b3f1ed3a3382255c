"""Deterministic demo benchmark: 2D axial brain MR slices with synthetic lesions and exact masks.

The anatomy is nilearn's MNI152 2009 T1 template (shipped inside the nilearn package, so nothing is downloaded). Each
sample re-slices the 3D template at its own height with a random affine, a smooth elastic warp and its own intensity
changes, so no two samples share anatomy exactly. About half of the samples carry 1-3 lesions
(:mod:`medxgan_monai.data.lesions`).

The anatomy is normalised with a fixed, volume-wide constant *before* lesions are drawn and stored on a fixed integer
scale: per-image rescaling after lesion insertion lets global brightness predict the label (a leak measured in an early
prototype). :func:`image_statistics_auc` checks that simple statistics carry no label information.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from medxgan_monai.data.lesions import (
    LesionSettings,
    acquisition_contrast,
    draw_lesions,
    elastic_displacement,
)
from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, atomic_replace_dir, write_mr_slice, write_nifti

__all__ = ["DemoDataSettings", "build_demo_dataset", "image_statistics_auc", "render_sample"]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
# stored value of the anatomy's 99.5th brain percentile; leaves head-room below 4095 for lesions and noise
INTENSITY_SCALE = 1000.0
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, used by generate_uid


@dataclass(frozen=True)
class DemoDataSettings:
    """Everything that determines the demo benchmark; the same settings and seed give identical files.

    Attributes:
        size: image width and height in pixels.
        seed: master seed; each sample draws from its own generator seeded with (seed, split, index).
        n_train, n_val, n_test: number of samples per split (half positive, rounded down).
        field_of_view_mm: square field of view; pixel spacing is field_of_view_mm / size.
        z_range_mm: MNI z range (mm) that axial slices are taken from.
        lesions: lesion shape and contrast ranges.
    """

    size: int = 64
    seed: int = 0
    n_train: int = 2000
    n_val: int = 300
    n_test: int = 500
    field_of_view_mm: float = 220.0
    z_range_mm: tuple[float, float] = (-12.0, 48.0)
    max_rotation_deg: float = 15.0
    max_tilt_deg: float = 6.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift_mm: float = 8.0
    elastic_mm: float = 4.0
    gamma_range: tuple[float, float] = (0.8, 1.25)
    gain_range: tuple[float, float] = (0.85, 1.15)
    bias_field_strength: float = 0.15
    noise_range: tuple[float, float] = (0.01, 0.035)
    lesions: LesionSettings = field(default_factory=LesionSettings)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16, not {self.size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")

    @property
    def pixel_spacing_mm(self) -> float:
        return self.field_of_view_mm / self.size


class _Template:
    """The MNI152 T1 template and brain mask as arrays, with the world-to-voxel transform."""

    def __init__(self) -> None:
        from nilearn import datasets

        t1 = datasets.load_mni152_template(resolution=1)
        brain = datasets.load_mni152_brain_mask(resolution=1)
        volume = np.asarray(t1.get_fdata(), dtype=np.float32)
        self.brain = np.asarray(brain.get_fdata(), dtype=np.float32)
        # one constant for the whole volume, applied before any lesion exists
        self.volume = volume / np.percentile(volume[self.brain > 0], 99.5)
        self.world_to_voxel = np.linalg.inv(t1.affine)
        centre_voxel = (np.array(volume.shape) - 1) / 2
        self.centre_world = (t1.affine @ np.append(centre_voxel, 1))[:3]

    def sample(self, world_points: np.ndarray, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Sample anatomy and brain mask at ``world_points`` (3, ...) given in RAS millimetres."""
        voxels = np.tensordot(self.world_to_voxel[:3, :3], world_points, axes=1)
        voxels += self.world_to_voxel[:3, 3].reshape(3, *([1] * (world_points.ndim - 1)))
        anatomy = ndimage.map_coordinates(self.volume, voxels, order=order, mode="constant", cval=0.0)
        brain = ndimage.map_coordinates(self.brain, voxels, order=1, mode="constant", cval=0.0) > 0.5
        return anatomy, brain


def _rotation(yaw: float, tilt_x: float, tilt_y: float) -> np.ndarray:
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(tilt_x), np.sin(tilt_x)
    cy, sy = np.cos(tilt_y), np.sin(tilt_y)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def slice_affine(settings: DemoDataSettings, z_mm: float, centre_xy: tuple[float, float]) -> np.ndarray:
    """Nominal RAS affine of a demo slice: array index i runs right-to-left, j anterior-to-posterior.

    That is the standard radiological axial view, and the geometry MONAI reports when it reads the DICOM copy.
    """
    s = settings.pixel_spacing_mm
    half = (settings.size - 1) / 2
    affine = np.diag([-s, -s, 3.0, 1.0])
    affine[:3, 3] = [centre_xy[0] + half * s, centre_xy[1] + half * s, z_mm]
    return affine


def anatomical_variation(
    rng: np.random.Generator, settings: DemoDataSettings, nominal: np.ndarray, centre: np.ndarray
) -> np.ndarray:
    """Where in the template the ``nominal`` world points (3, ...) of a sample actually look: a random rotation (yaw
    and two tilts), in-plane scaling and shift about ``centre``. The elastic warp is drawn after it, by the caller."""
    rotation = _rotation(
        np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg)),
        np.deg2rad(rng.uniform(-settings.max_tilt_deg, settings.max_tilt_deg)),
        np.deg2rad(rng.uniform(-settings.max_tilt_deg, settings.max_tilt_deg)),
    )
    scales = rng.uniform(*settings.scale_range, size=3)
    scales[2] = 1.0
    shift = np.append(rng.uniform(-settings.max_shift_mm, settings.max_shift_mm, size=2), 0.0)
    axes = (3, *([1] * (nominal.ndim - 1)))
    offsets = (nominal - centre.reshape(axes)).reshape(3, -1)
    return (rotation @ (scales.reshape(3, 1) * offsets)).reshape(nominal.shape) + (centre + shift).reshape(axes)


def render_sample(template: _Template, settings: DemoDataSettings, rng: np.random.Generator, positive: bool) -> dict:
    """Render one slice: returns the stored integer image, its mask, the nominal affine and what was drawn."""
    n = settings.size
    z_mm = float(rng.uniform(*settings.z_range_mm))
    centre = np.array([template.centre_world[0], template.centre_world[1], z_mm])
    affine = slice_affine(settings, z_mm, (centre[0], centre[1]))
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    nominal = np.stack([affine[0, 0] * i + affine[0, 3], affine[1, 1] * j + affine[1, 3], np.full(i.shape, z_mm)])

    # anatomical variation: where in the template each nominal point actually looks
    warped = anatomical_variation(rng, settings, nominal, centre)
    warped[:2] += elastic_displacement(rng, n, settings.elastic_mm)
    anatomy, brain = template.sample(warped)

    records: list[dict] = []
    mask = np.zeros((n, n), dtype=bool)
    if positive:
        anatomy, mask, records = draw_lesions(anatomy, brain, rng, settings.lesions)

    # acquisition: gamma, gain, a smooth multiplicative bias field and Rician noise, equal for both classes
    image = acquisition_contrast(anatomy, rng, settings.gamma_range, settings.gain_range, settings.bias_field_strength)
    sigma = rng.uniform(*settings.noise_range)
    image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
    stored = np.clip(np.round(image * INTENSITY_SCALE), 0, 4095).astype(np.int16)
    return {"image": stored, "mask": mask.astype(np.uint8), "affine": affine, "lesions": records, "z_mm": z_mm}


def _dicom_geometry(affine: np.ndarray) -> MRSliceGeometry:
    """DICOM geometry of a slice whose NIfTI array is indexed [i, j] = [column, row] with a RAS ``affine``."""
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    row_direction = ras_to_lps @ affine[:3, 0]
    column_direction = ras_to_lps @ affine[:3, 1]
    col_spacing, row_spacing = np.linalg.norm(row_direction), np.linalg.norm(column_direction)
    orientation = np.concatenate([row_direction / col_spacing, column_direction / row_spacing])
    position = ras_to_lps @ affine[:3, 3]
    return MRSliceGeometry(
        image_position=tuple(float(v) for v in position),
        image_orientation=tuple(float(v) + 0.0 for v in orientation),
        pixel_spacing=(float(row_spacing), float(col_spacing)),
        slice_thickness=float(abs(affine[2, 2])),
    )


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def build_demo_dataset(
    out_dir: str | os.PathLike, settings: DemoDataSettings | None = None, overwrite: bool = False
) -> dict:
    """Build the demo benchmark into ``out_dir`` and return its manifest.

    Writes ``images/*.nii.gz``, ``masks/*.nii.gz``, ``dicom/*.dcm`` (the same images as DICOM MR), ``datalist.json``
    (NIfTI images) and ``datalist_dicom.json`` (DICOM images), both in MONAI's decathlon style with paths relative to
    the datalist, and ``manifest.json`` (settings, counts, lesion records and the leakage check). The folder appears
    only when complete; an existing folder is replaced only with ``overwrite=True``.

    Example::

        manifest = build_demo_dataset("data/demo", DemoDataSettings(n_train=200, n_val=50, n_test=50))
    """
    settings = settings or DemoDataSettings()
    start = time.perf_counter()
    template = _Template()
    counts = {"training": settings.n_train, "validation": settings.n_val, "test": settings.n_test}
    datalist: dict[str, list] = {split: [] for split in SPLITS}
    dicom_datalist: dict[str, list] = {split: [] for split in SPLITS}
    lesion_records = {}
    training_statistics: list[dict[str, float]] = []
    with atomic_replace_dir(out_dir, overwrite=overwrite) as staging:
        for folder in ("images", "masks", "dicom"):
            (staging / folder).mkdir()
        for split in SPLITS:
            labels = split_labels(settings.seed, split, counts[split])
            for index, label in enumerate(labels):
                stem = f"{split}_{index:05d}"
                sample = render_sample(template, settings, _sample_rng(settings.seed, split, index), bool(label))
                item = write_sample_nifti(staging, stem, sample, int(label))
                uid_entropy = [str(settings.seed), split, str(index)]
                patient = SyntheticPatient(
                    patient_id=f"MXG-{settings.seed}-{stem}",
                    patient_name=f"DEMO^{stem.upper()}",
                    study_instance_uid=generate_uid(UID_ROOT, uid_entropy + ["study"]),
                    series_instance_uid=generate_uid(UID_ROOT, uid_entropy + ["series"]),
                )
                write_mr_slice(
                    sample["image"].T.astype(np.uint16),  # DICOM pixel order is [row, column] = [j, i]
                    _dicom_geometry(sample["affine"]),
                    patient,
                    staging / "dicom" / f"{stem}.dcm",
                    series_description=f"medxgan-monai demo {stem}",
                    sop_instance_uid=generate_uid(UID_ROOT, uid_entropy + ["instance"]),
                )
                datalist[split].append(item)
                dicom_datalist[split].append({**item, "image": f"dicom/{stem}.dcm"})
                if split == "training":
                    training_statistics.append(_image_statistics(sample["image"]))
                if sample["lesions"]:
                    lesion_records[stem] = sample["lesions"]
        _write_json(staging / "datalist.json", datalist)
        _write_json(staging / "datalist_dicom.json", dicom_datalist)
        description = "medxgan-monai demo benchmark: MNI152 T1 axial slices with synthetic lesions"
        source = {"anatomy_source": "nilearn MNI152 2009 T1 template (resolution 1 mm)"}
        manifest = benchmark_manifest(description, source, settings, datalist, training_statistics, lesion_records)
        manifest["build_seconds"] = round(time.perf_counter() - start, 2)
        _write_json(staging / "manifest.json", manifest)
    logger.info("demo data written to %s in %.1f s", out_dir, manifest["build_seconds"])
    return manifest


def split_labels(seed: int, split: str, count: int) -> np.ndarray:
    """The labels of a demo benchmark's split: half of ``count`` positive (rounded down), in an order drawn from
    (``seed``, split)."""
    labels = np.zeros(count, dtype=int)
    labels[: count // 2] = 1
    np.random.default_rng([seed, SPLITS.index(split), 2**31]).shuffle(labels)
    return labels


def write_sample_nifti(folder: Path, stem: str, sample: dict, label: int) -> dict:
    """Write a rendered sample's image and mask as ``images/<stem>.nii.gz`` and ``masks/<stem>.nii.gz`` under
    ``folder``; returns its datalist item (paths relative to ``folder``)."""
    write_nifti(sample["image"], sample["affine"], folder / "images" / f"{stem}.nii.gz")
    write_nifti(sample["mask"], sample["affine"], folder / "masks" / f"{stem}.nii.gz")
    return {"image": f"images/{stem}.nii.gz", "label": label, "mask": f"masks/{stem}.nii.gz"}


def benchmark_manifest(
    description: str,
    source: dict,
    settings,
    datalist: dict[str, list],
    training_statistics: list[dict[str, float]],
    lesions: dict,
) -> dict:
    """A demo benchmark's manifest (the caller adds its build time and writes it): what it is, its ``source``
    entries, its settings (a dataclass), the counts per split, the intensity scale, the leakage check
    (:func:`image_statistics_auc`'s, on the training statistics still in memory) and the lesions."""
    manifest = {
        "description": description,
        **source,
        "settings": asdict(settings),
        "counts": {
            split: {"total": len(items), "positive": sum(item["label"] for item in items)}
            for split, items in datalist.items()
        },
        "intensity_scale": INTENSITY_SCALE,
        "leakage_check_auc": _statistics_auc(training_statistics, [item["label"] for item in datalist["training"]]),
        "lesions": lesions,
    }
    return manifest


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1) + "\n")


def _image_statistics(data: np.ndarray) -> dict[str, float]:
    data = np.asarray(data, dtype=np.float64)
    return {
        "mean": data.mean(),
        "std": data.std(),
        "min": data.min(),
        "max": data.max(),
        "p01": np.percentile(data, 1),
        "p99": np.percentile(data, 99),
    }


def _statistics_auc(statistics: list[dict[str, float]], labels: list[int]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    if len(set(labels)) < 2:
        return {}
    names = statistics[0].keys()
    return {name: round(float(roc_auc_score(labels, [row[name] for row in statistics])), 4) for name in names}


def image_statistics_auc(datalist_file: str | os.PathLike, section: str = "training") -> dict[str, float]:
    """ROC AUC of simple whole-image statistics (mean, std, min, max, 1st and 99th percentile) against the label.

    Values near 0.5 mean the statistic says nothing about the label; a value far from 0.5 is a shortcut a
    classifier could learn instead of the lesion.
    """
    import nibabel as nib

    root = Path(datalist_file).parent
    items = json.loads(Path(datalist_file).read_text())[section]
    statistics = [_image_statistics(nib.load(root / item["image"]).dataobj) for item in items]
    return _statistics_auc(statistics, [item["label"] for item in items])
