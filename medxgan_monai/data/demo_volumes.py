"""Deterministic demo volumes: 3D axial brain MR volumes with lesions that span slices and exact 3D masks, written as
3D NIfTI files and as DICOM series folders, for the product's volume path (explained slice by slice, see
:mod:`medxgan_monai.data.volumes`).

Each volume is ``slices`` consecutive axial slices of ONE random re-slicing of nilearn's MNI152 T1 template (one
rotation, scaling, shift and smooth elastic warp per volume), so the anatomy is continuous from slice to slice. In-plane
size and spacing, the range of geometric variation, the MNI z range the slices come from, the acquisition (gamma, gain,
bias field, Rician noise) and the stored intensity scale (:data:`~medxgan_monai.data.demo.INTENSITY_SCALE`) are those
of the 2D demo (:class:`~medxgan_monai.data.DemoDataSettings`), so every slice is the kind of image the shipped 2D
classifier was trained on.

Lesions are 3D: an ellipsoid whose in-plane cross-section through its centre has the area of a 2D demo lesion
(:class:`~medxgan_monai.data.LesionSettings` ``area_fraction``) and whose extent along the slice normal is
``lesion_slices`` slices, its boundary perturbed by the in-plane harmonics and smooth noise that
:mod:`medxgan_monai.data.lesions` uses in 2D; contrast, polarity, edge ramp, texture and necrotic core follow the 2D
rules and ranges. The mask holds exactly the voxels whose stored value the lesion changed: every volume is rendered
with and without its lesions from the same anatomy and acquisition draws (lesions draw from a generator of their
own), and the mask is where the two stored volumes differ.

The same machinery builds the native-3D training benchmark (:data:`BENCHMARK_3D`, ``make_demo_data --anatomy
mni152_3d``): brain volumes of 32 x 32 x 32 voxels of 5 mm in splits ``training``, ``validation`` and ``test``,
each split drawing from random streams of its own, with the leakage check of the 2D demo
(:func:`~medxgan_monai.data.demo.benchmark_manifest`) in its manifest.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from medxgan_monai.data.demo import (
    INTENSITY_SCALE,
    SPLITS,
    UID_ROOT,
    DemoDataSettings,
    _dicom_geometry,
    _image_statistics,
    _Template,
    _write_json,
    anatomical_variation,
    benchmark_manifest,
    slice_affine,
)
from medxgan_monai.data.lesions import LesionSettings, lesion_change, perturbed_ellipse, smooth_noise
from medxgan_monai.io import SyntheticPatient, atomic_replace_dir, read_dicom_series, write_mr_slice, write_nifti

__all__ = ["BENCHMARK_3D", "DemoVolumeSettings", "build_demo_volumes", "render_volume", "volume_affine"]

logger = logging.getLogger(__name__)

#: first entry after the seed of every random stream of the test volumes: the 2D demo's splits use 0..len(SPLITS) - 1,
#: so no volume ever shares a stream with a 2D sample
_VOLUME_STREAM = len(SPLITS)
#: the same entry for each split of the training benchmark (``training_splits``): after the test volumes' one, so the
#: benchmark shares no stream with the 2D demo, the test volumes or another of its splits
_SPLIT_STREAMS = {split: _VOLUME_STREAM + 1 + number for number, split in enumerate(SPLITS)}
#: the last entry of the streams that draw a volume's lesions, its labels and the order of its DICOM file names
_LESIONS, _LABELS, _FILE_NAMES = 1, 2**31, 2


@dataclass(frozen=True)
class DemoVolumeSettings:
    """Everything that determines the demo volumes; the same settings give identical arrays and files.

    Attributes:
        n_volumes: number of volumes of the one ``test`` section (without ``training_splits``), half positive (rounded
            down).
        slices: axial slices per volume (at least 2: a DICOM series of one slice is a 2D image).
        slice_step_mm: distance between consecutive slices; the slab, ``(slices - 1) * slice_step_mm``, lies inside
            ``demo.z_range_mm`` when it fits (else it is centred on it).
        max_lesions: each positive volume gets 1..max_lesions lesions.
        lesion_slices: (min, max) extent of a lesion along the slice normal, in slices (the max is capped at
            ``slices``); min at least 2, so that every lesion spans several slices.
        training_splits: build a training benchmark instead: sections ``training``, ``validation`` and ``test`` of
            ``demo.n_train``, ``n_val`` and ``n_test`` volumes (half positive each), each split drawing from random
            streams of its own, and the leakage check in the manifest.
        dicom_volumes: how many of the ``test`` volumes are also written as DICOM series (section ``test_dicom``):
            the first ``dicom_volumes // 2`` positive and the first of the rest negative ones; none when 0 (no
            section); None: all of them.
        demo: the 2D demo's settings: seed, in-plane size and field of view, geometric and acquisition variation, the
            MNI z range, lesion area (of a lesion's central cross-section) and contrast ranges; its ``n_train``,
            ``n_val`` and ``n_test`` only with ``training_splits``; its ``lesions.max_lesions`` is not used.
    """

    n_volumes: int = 24
    slices: int = 16
    slice_step_mm: float = 3.0
    max_lesions: int = 2
    lesion_slices: tuple[int, int] = (3, 8)
    training_splits: bool = False
    dicom_volumes: int | None = None
    demo: DemoDataSettings = field(default_factory=DemoDataSettings)

    def __post_init__(self) -> None:
        if self.n_volumes < 0:
            raise ValueError(f"n_volumes must be >= 0, not {self.n_volumes}")
        if self.slices < 2:
            raise ValueError(f"slices must be >= 2 (one slice is a 2D image), not {self.slices}")
        if not (np.isfinite(self.slice_step_mm) and self.slice_step_mm > 0):
            raise ValueError(f"slice_step_mm must be a positive number, not {self.slice_step_mm}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, not {self.max_lesions}")
        low, high = self.lesion_slices
        if not 2 <= low <= high:
            raise ValueError(f"lesion_slices must satisfy 2 <= min <= max, not {self.lesion_slices}")
        if self.dicom_volumes is not None and self.dicom_volumes < 0:
            raise ValueError(f"dicom_volumes must be >= 0 or None, not {self.dicom_volumes}")

    @property
    def seed(self) -> int:
        """The master seed: the 2D demo's (``demo.seed``)."""
        return self.demo.seed

    @property
    def counts(self) -> dict[str, int]:
        """The number of volumes of each split: ``training``, ``validation`` and ``test`` with ``training_splits``,
        else ``test`` only."""
        if self.training_splits:
            return {"training": self.demo.n_train, "validation": self.demo.n_val, "test": self.demo.n_test}
        return {"test": self.n_volumes}


#: the native-3D training benchmark (``make_demo_data --anatomy mni152_3d``): volumes of 32 x 32 x 32 voxels of 5 mm
#: (160 mm in every axis, for the template brain's 144 x 180 x 154 mm), the first slice drawn between MNI z -78 and
#: -68 mm so that the 155 mm slab holds nearly all of the brain's height (z -72..82 mm); lesions whose central
#: cross-section is 2-10% of the 32 x 32 field of view (radius 2.6-5.7 voxels, 13-29 mm) and whose extent along z is
#: 5-11 slices (25-55 mm), so each spans several voxels in every axis; 600 / 100 / 200 volumes; 8 test volumes (4
#: positive) also as DICOM series
BENCHMARK_3D = DemoVolumeSettings(
    slices=32,
    slice_step_mm=5.0,
    lesion_slices=(5, 11),
    training_splits=True,
    dicom_volumes=8,
    demo=DemoDataSettings(
        size=32,
        field_of_view_mm=160.0,
        z_range_mm=(-78.0, 87.0),
        n_train=600,
        n_val=100,
        n_test=200,
        lesions=LesionSettings(area_fraction=(0.02, 0.10)),
    ),
)


def _split_stream(settings: DemoVolumeSettings, split: str) -> int:
    """The entry after the seed of every random stream of ``split``'s volumes."""
    if split not in settings.counts:
        raise ValueError(f"split must be one of {', '.join(settings.counts)}, not {split!r}")
    return _SPLIT_STREAMS[split] if settings.training_splits else _VOLUME_STREAM


def _volume_rng(settings: DemoVolumeSettings, split: str, index: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([settings.seed, _split_stream(settings, split), index, *stream])


def _case_name(settings: DemoVolumeSettings, split: str, index: int) -> str:
    return f"{split}_{index:05d}" if settings.training_splits else f"volume_{index:04d}"


def _dicom_quota(settings: DemoVolumeSettings, split: str) -> dict[int, int]:
    """How many volumes of each label of ``split`` are also written as DICOM series: none outside ``test``, every
    test volume, or ``dicom_volumes`` of them, half positive (rounded down) like the sections."""
    if split != "test":
        return {0: 0, 1: 0}
    if settings.dicom_volumes is None:
        return {0: settings.counts[split], 1: settings.counts[split]}
    return {0: settings.dicom_volumes - settings.dicom_volumes // 2, 1: settings.dicom_volumes // 2}


def volume_affine(settings: DemoVolumeSettings, z_first_mm: float, centre_xy: tuple[float, float]) -> np.ndarray:
    """Nominal RAS affine of a demo volume laid out (columns, rows, slices): each slice is the 2D demo's slice
    (:func:`~medxgan_monai.data.demo.slice_affine`: i right-to-left, j anterior-to-posterior) and k runs upwards in
    steps of ``slice_step_mm`` from ``z_first_mm``; the layout and affine :func:`~medxgan_monai.io.read_dicom_series`
    gives for the DICOM copy."""
    affine = slice_affine(settings.demo, z_first_mm, centre_xy)
    affine[2, 2] = settings.slice_step_mm
    return affine


def _lesion_shape(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    centre: np.ndarray,
    radius: float,
    half_extent: float,
) -> np.ndarray:
    """An irregular 3D blob: an ellipsoid whose cross-section through ``centre`` is the 2D lesion's ellipse (area
    pi * ``radius``**2 pixels) and whose semi-axis along k is ``half_extent`` slices, its boundary perturbed by the
    same low in-plane harmonics and smooth noise as :mod:`medxgan_monai.data.lesions`."""
    i, j, k = np.meshgrid(*(np.arange(size) for size in shape), indexing="ij")
    u, v, boundary, aspect = perturbed_ellipse(rng, i - centre[0], j - centre[1])
    # as in 2D, the ellipse's area is compensated for its aspect, so the central cross-section has the requested area
    rho = np.sqrt((u**2 + v**2) / (radius / np.sqrt(aspect)) ** 2 + ((k - centre[2]) / half_extent) ** 2)
    noise_sigma = (max(radius / 3, 1.0), max(radius / 3, 1.0), max(half_extent / 3, 0.5))
    return rho + 0.12 * smooth_noise(rng, shape, sigma=noise_sigma) < boundary


def _draw_volume_lesions(
    anatomy: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    settings: DemoVolumeSettings,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Insert 1..max_lesions 3D lesions inside ``brain``; returns the new anatomy, the voxels drawn on and records.

    The 2D rules of :func:`medxgan_monai.data.lesions.draw_lesions`, in 3D: central cross-section area from
    ``area_fraction`` (the upper bound divided by the number of lesions), centres at least half a radius inside the
    brain, contrast relative to the mean brain intensity, a ramp from the edge inwards, texture, an optional necrotic
    core, intensities kept within the anatomy's own range.
    """
    lesions: LesionSettings = settings.demo.lesions
    shape = anatomy.shape
    image = anatomy.astype(np.float64).copy()
    drawn = np.zeros(shape, dtype=bool)
    fov_area = shape[0] * shape[1]
    # depth and distances in in-plane pixels, the unit of the 2D lesions' radius and ramp
    voxel_sampling = (1.0, 1.0, settings.slice_step_mm / settings.demo.pixel_spacing_mm)
    brain_level = float(anatomy[brain].mean()) if brain.any() else float(anatomy.mean())
    low, high = float(anatomy.min()), float(anatomy.max())
    n_lesions = int(rng.integers(1, settings.max_lesions + 1))
    upper = max(lesions.area_fraction[0], lesions.area_fraction[1] / n_lesions)
    inside = ndimage.distance_transform_edt(brain, sampling=voxel_sampling)
    slice_index = np.arange(shape[2]).reshape(1, 1, -1)
    records = []
    for _ in range(n_lesions):
        area = np.exp(rng.uniform(np.log(lesions.area_fraction[0]), np.log(upper))) * fov_area
        radius = np.sqrt(area / np.pi)
        extent = int(rng.integers(settings.lesion_slices[0], min(settings.lesion_slices[1], shape[2]) + 1))
        half_extent = extent / 2
        # centres far enough from the first and last slice that the lesion is not cut down to one slice
        margin = min(int(np.floor(half_extent - 0.5)), (shape[2] - 1) // 2)
        within_slab = (slice_index >= margin) & (slice_index <= shape[2] - 1 - margin)
        candidates = np.argwhere((inside >= 0.5 * radius) & within_slab)
        if len(candidates) == 0:
            candidates = np.argwhere((inside >= inside.max() * 0.8) & within_slab)
        if len(candidates) == 0:
            candidates = np.argwhere(inside >= inside.max() * 0.8)
        expected_voxels = 4 / 3 * np.pi * radius**2 * half_extent
        blob = np.zeros(shape, bool)
        for _attempt in range(8):
            centre = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, size=3)
            blob = _lesion_shape(rng, shape, centre, radius, half_extent) & brain & ~drawn
            spans_slices = np.count_nonzero(blob.any(axis=(0, 1))) >= 2
            if spans_slices and blob.sum() >= 0.6 * expected_voxels:
                break
        if not blob.any():
            continue
        texture_sigma = (1.2, 1.2, 1.2 / voxel_sampling[2])
        change, hyper, contrast = lesion_change(blob, rng, lesions, brain_level, voxel_sampling, texture_sigma)
        image[blob] = np.clip(image[blob] + change[blob], low, high)
        drawn |= blob
        lesion_slices = np.flatnonzero(blob.any(axis=(0, 1)))
        occupied = np.argwhere(blob)
        records.append(
            {
                "voxels": int(blob.sum()),
                "slices": [int(lesion_slices[0]), int(lesion_slices[-1])],
                # the bounding box's size along i, j, k
                "extent_voxels": [int(size) for size in np.ptp(occupied, axis=0) + 1],
                "central_area_fraction": round(float(area) / fov_area, 5),
                "polarity": "hyper" if hyper else "hypo",
                "contrast": round(float(contrast), 4),
                "centre_ijk": [round(float(c), 2) for c in centre],
            }
        )
    return image, drawn, records


def render_volume(
    settings: DemoVolumeSettings,
    index: int,
    positive: bool,
    template: _Template | None = None,
    split: str = "test",
) -> dict:
    """Render volume ``index`` of ``split``: the same anatomy and acquisition whether ``positive`` or not; a positive
    one carries lesions drawn from a random stream of their own.

    Args:
        settings: the volumes' settings.
        index: the volume's number; with ``settings.seed`` and ``split`` it seeds every draw.
        positive: draw lesions.
        template: the MNI152 template, loaded when not given (give it when rendering many volumes).
        split: one of ``settings.counts`` (``test`` without ``training_splits``).

    Returns:
        ``{"image": int16 (size, size, slices), "lesion_free": the same volume rendered without lesions, "mask": uint8,
        the voxels where image and lesion_free differ, "affine": RAS 4x4, "lesions": records, "z_mm": the first
        slice's nominal height}``; negatives have an empty mask and ``image`` equal to ``lesion_free``.

    Example::

        volume = render_volume(DemoVolumeSettings(), 3, positive=True)
        assert (volume["mask"] == (volume["image"] != volume["lesion_free"])).all()
    """
    template = _Template() if template is None else template
    demo = settings.demo
    rng = _volume_rng(settings, split, index)
    n, n_slices, step = demo.size, settings.slices, settings.slice_step_mm
    span = (n_slices - 1) * step
    z_low, z_high = demo.z_range_mm
    z_first = float(rng.uniform(z_low, z_high - span)) if span <= z_high - z_low else (z_low + z_high - span) / 2
    centre = np.array([template.centre_world[0], template.centre_world[1], z_first + span / 2])
    affine = volume_affine(settings, z_first, (centre[0], centre[1]))
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), np.arange(n_slices), indexing="ij")).astype(np.float64)
    nominal = np.tensordot(affine[:3, :3], grid, axes=1) + affine[:3, 3].reshape(3, 1, 1, 1)

    # anatomical variation, as in 2D, drawn once for the whole volume so that anatomy is continuous across slices
    warped = anatomical_variation(rng, demo, nominal, centre)
    # the 2D warp's smoothness (n / 8 pixels) in millimetres along the slice normal too
    elastic_sigma = (n / 8, n / 8, n / 8 * demo.pixel_spacing_mm / step)
    shape = (n, n, n_slices)
    warped[:2] += np.stack([smooth_noise(rng, shape, sigma=elastic_sigma) for _ in range(2)]) * demo.elastic_mm / 2
    anatomy, brain = template.sample(warped)
    # float64 like the lesioned copy, so that the two are acquired alike wherever the lesions left the anatomy alone
    anatomy = anatomy.astype(np.float64)

    # acquisition, as in 2D: gamma, gain, a smooth multiplicative bias field and Rician noise, drawn once and applied
    # alike to the volume with and without lesions
    gamma = rng.uniform(*demo.gamma_range)
    gain = rng.uniform(*demo.gain_range)
    coarse = rng.standard_normal((4, 4, 2)) * demo.bias_field_strength
    bias = np.exp(ndimage.zoom(coarse, (n / 4, n / 4, n_slices / 2), order=3, mode="nearest")[:n, :n, :n_slices])
    sigma = rng.uniform(*demo.noise_range)
    noise = rng.normal(0, sigma, (2, *shape))

    def acquire(tissue: np.ndarray) -> np.ndarray:
        image = np.clip(tissue, 0, None) ** gamma * gain * bias
        image = np.hypot(image + noise[0], noise[1])
        return np.clip(np.round(image * INTENSITY_SCALE), 0, 4095).astype(np.int16)

    lesion_free = acquire(anatomy)
    image, records = lesion_free, []
    if positive:
        lesioned, _, records = _draw_volume_lesions(
            anatomy, brain, _volume_rng(settings, split, index, _LESIONS), settings
        )
        image = acquire(lesioned)
    # exact: the voxels the lesions changed after acquisition, clipping and rounding (within the voxels drawn on)
    mask = (image != lesion_free).astype(np.uint8)
    return {
        "image": image,
        "lesion_free": lesion_free,
        "mask": mask,
        "affine": affine,
        "lesions": records,
        "z_mm": z_first,
    }


def _write_dicom_series(
    volume: dict, settings: DemoVolumeSettings, split: str, index: int, case: str, folder: Path
) -> list[Path]:
    """One MR instance per slice of ``volume`` in ``folder`` (one series of one synthetic patient); file names in a
    scrambled order, so that readers must sort along the normal. Returns the files, slice k's file k-th."""
    folder.mkdir()
    # the split in the benchmark's UIDs only: the test volumes' UIDs stay what they always were
    uid_entropy = [str(settings.seed), "volumes", *([split] if settings.training_splits else []), str(index)]
    patient = SyntheticPatient(
        patient_id=f"MXG-{settings.seed}-{case}",
        patient_name=f"DEMO^{case.upper()}",
        study_instance_uid=generate_uid(UID_ROOT, uid_entropy + ["study"]),
        series_instance_uid=generate_uid(UID_ROOT, uid_entropy + ["series"]),
    )
    names = _volume_rng(settings, split, index, _FILE_NAMES).permutation(settings.slices)
    files = []
    for k in range(settings.slices):
        slice_affine_k = volume["affine"].copy()
        slice_affine_k[:3, 3] = volume["affine"][:3, :3] @ (0.0, 0.0, k) + volume["affine"][:3, 3]
        path = folder / f"IM{names[k] + 1:04d}.dcm"
        write_mr_slice(
            volume["image"][:, :, k].T.astype(np.uint16),  # DICOM pixel order is [row, column] = [j, i]
            _dicom_geometry(slice_affine_k),
            patient,
            path,
            series_description=f"medxgan-monai demo volume {case}",
            instance_number=k + 1,
            sop_instance_uid=generate_uid(UID_ROOT, uid_entropy + ["instance", str(k)]),
        )
        files.append(path)
    return files


def build_demo_volumes(
    out_dir: str | os.PathLike, settings: DemoVolumeSettings | None = None, overwrite: bool = False
) -> dict:
    """Build the demo volumes into ``out_dir`` and return their manifest.

    Writes, per case (``volume_NNNN``; with ``training_splits`` ``<split>_NNNNN``): ``<case>.nii.gz`` (int16 on the
    2D demo's scale, the exact affine) and ``<case>_mask.nii.gz`` (uint8, same grid, empty for a negative), and for
    the test volumes written as DICOM (all of them unless ``dicom_volumes`` says how many) ``<case>_dicom/`` (the same
    volume as a DICOM MR series, one instance per slice) and ``<case>_dicom_mask.nii.gz`` (the mask in the series' own
    volume grid: the (columns, rows, slices) layout and affine of :func:`~medxgan_monai.io.read_dicom_series`);
    ``datalist.json`` with a section per split (``test``; with ``training_splits`` also ``training`` and
    ``validation``) of ``{"image": "<case>.nii.gz", "label", "mask"}`` and a ``test_dicom`` section (``{"image":
    "<case>_dicom", "label", "mask": "<case>_dicom_mask.nii.gz"}``), paths relative to the datalist; and
    ``manifest.json`` (settings, counts, lesion records, build seconds; with ``training_splits`` the 2D demo's
    manifest with its leakage check, :func:`~medxgan_monai.data.demo.benchmark_manifest`). The folder appears only
    when complete; an existing folder is replaced only with ``overwrite=True``.

    Args:
        out_dir: the folder to create.
        settings: the volumes' settings (default :class:`DemoVolumeSettings`; :data:`BENCHMARK_3D` for the native-3D
            training benchmark).
        overwrite: replace ``out_dir`` if it exists.

    Returns:
        The manifest, as written to ``manifest.json``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        RuntimeError: a positive volume ended up without a lesion (no brain in its slab).

    Example::

        manifest = build_demo_volumes("data/demo/volumes", DemoVolumeSettings(n_volumes=8, slices=12))
        benchmark = build_demo_volumes("data/demo3d", BENCHMARK_3D)
    """
    settings = settings or DemoVolumeSettings()
    start = time.perf_counter()
    template = _Template()
    datalist: dict[str, list] = {split: [] for split in settings.counts}
    if settings.dicom_volumes != 0:
        datalist["test_dicom"] = []
    lesion_records = {}
    training_statistics: list[dict[str, float]] = []
    with atomic_replace_dir(out_dir, overwrite=overwrite) as staging:
        for split, count in settings.counts.items():
            labels = np.zeros(count, dtype=int)
            labels[: count // 2] = 1
            np.random.default_rng([settings.seed, _split_stream(settings, split), _LABELS]).shuffle(labels)
            dicom_quota = _dicom_quota(settings, split)
            for index, label in enumerate(labels.tolist()):
                case = _case_name(settings, split, index)
                volume = render_volume(settings, index, bool(label), template, split=split)
                if label and not volume["mask"].any():
                    raise RuntimeError(f"{case}: no lesion could be placed in the brain of this slab")
                write_nifti(volume["image"], volume["affine"], staging / f"{case}.nii.gz")
                write_nifti(volume["mask"], volume["affine"], staging / f"{case}_mask.nii.gz")
                datalist[split].append({"image": f"{case}.nii.gz", "label": label, "mask": f"{case}_mask.nii.gz"})
                if dicom_quota[label] > 0:
                    dicom_quota[label] -= 1
                    files = _write_dicom_series(volume, settings, split, index, case, staging / f"{case}_dicom")
                    # the mask in the grid the series is read into, whatever order and geometry the reader settles on
                    series = read_dicom_series(files, origin=f"{case}_dicom")
                    order = [files.index(path) for path in series.paths]
                    write_nifti(volume["mask"][:, :, order], series.affine, staging / f"{case}_dicom_mask.nii.gz")
                    datalist["test_dicom"].append(
                        {"image": f"{case}_dicom", "label": label, "mask": f"{case}_dicom_mask.nii.gz"}
                    )
                if split == "training":
                    training_statistics.append(_image_statistics(volume["image"]))
                if volume["lesions"]:
                    lesion_records[case] = volume["lesions"]
        _write_json(staging / "datalist.json", datalist)
        source = {"anatomy_source": "nilearn MNI152 2009 T1 template (resolution 1 mm)"}
        if settings.training_splits:
            description = "medxgan-monai native-3D demo benchmark: MNI152 T1 volumes with 3D synthetic lesions"
            manifest = benchmark_manifest(description, source, settings, datalist, training_statistics, lesion_records)
        else:
            manifest = {
                "description": "medxgan-monai demo volumes: MNI152 T1 axial slabs with 3D synthetic lesions",
                **source,
                "settings": asdict(settings),
                "counts": {"total": settings.n_volumes, "positive": settings.n_volumes // 2},
                "intensity_scale": INTENSITY_SCALE,
                "lesions": lesion_records,
            }
        manifest["build_seconds"] = round(time.perf_counter() - start, 2)
        _write_json(staging / "manifest.json", manifest)
    logger.info("demo volumes written to %s in %.1f s", out_dir, manifest["build_seconds"])
    return manifest
