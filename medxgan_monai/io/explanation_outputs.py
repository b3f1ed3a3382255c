"""Explanation outputs, one writer per kind: NIfTI maps, NIfTI counterfactuals, the panel, the sweep GIF and the
DICOM derived series.

Each writer is called with one :class:`ExplainedImage` (everything explained about one source image, already
brought back to the source grid, with the geometry the loader recorded) and an empty folder to write into; the
inference bundle lists the writers it runs (``inference.json`` ``writers``). A new output kind is a new writer class
here and one entry in that list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medxgan_monai.io.dicom_derived import (
    frame_header,
    write_overlay_secondary_capture,
    write_saliency_parametric_map,
    write_series_parametric_map,
    write_series_segmentation,
)
from medxgan_monai.io.figures import saliency_overlay, write_panel_rows, write_sweep_gif
from medxgan_monai.io.nifti import write_nifti

__all__ = [
    "DicomDerivedWriter",
    "ExplainedCounterfactual",
    "ExplainedImage",
    "ExplainedMethod",
    "ExplainedVolume",
    "NiftiCounterfactualWriter",
    "NiftiMapWriter",
    "PanelWriter",
    "SweepWriter",
    "default_writers",
    "native_volume",
    "stack_slices",
]


@dataclass
class ExplainedMethod:
    """One method's result for one image.

    ``saliency`` is in the model's grid, (x, y) as MONAI holds arrays; ``saliency_in_source_grid`` in the source's;
    ``counterfactual_name`` names its counterfactual in :attr:`ExplainedImage.counterfactuals`, ``None`` without one.
    """

    title: str
    in_panel: bool
    saliency: np.ndarray
    saliency_in_source_grid: np.ndarray
    counterfactual_name: str | None = None
    sweep: tuple[np.ndarray, list[float], list[float]] | None = None  # frames (K, x, y), probabilities, alphas
    peak: float | None = None  # the raw map's largest magnitude, which normalization divided by


@dataclass
class ExplainedCounterfactual:
    """A counterfactual image of one image: in the model's grid (x, y), in the source's, and its probability."""

    image: np.ndarray
    in_source_grid: np.ndarray
    probability: float


@dataclass
class ExplainedImage:
    """Everything explained about one source image, for the writers.

    Args:
        stem: the output name stem (safe and unique in the output folder).
        source: the source file (read-only; never re-opened for geometry).
        source_format: ``"nifti"``, ``"dicom"`` or ``"bitmap"``.
        affine, shape: the geometry outputs are written in (:func:`~medxgan_monai.io.nifti.output_geometry`).
        image: the model's input picture, (x, y) in [0, 1].
        probability: the classifier's target-class probability.
        methods: method name -> :class:`ExplainedMethod`, in the order the methods ran.
        counterfactuals: output name (``counterfactual``, ``residual_counterfactual``) ->
            :class:`ExplainedCounterfactual`, one per name (of the first method giving it).
    """

    stem: str
    source: str
    source_format: str
    affine: np.ndarray
    shape: tuple | None
    image: np.ndarray
    probability: float
    methods: dict[str, ExplainedMethod] = field(default_factory=dict)
    counterfactuals: dict[str, ExplainedCounterfactual] = field(default_factory=dict)
    volume: ExplainedVolume | None = None


@dataclass
class ExplainedVolume:
    """What a volume adds to its :class:`ExplainedImage` (made by :func:`stack_slices`): the arrays "in the source
    grid" are the volume's, the model-grid picture, maps, counterfactuals and sweep are those of ``top_slice``, the
    slice the classifier calls most positive (for the panel and the GIF).

    Args:
        slice_axis: the axis the slices are stacked along in the volume's arrays.
        slice_sources: each slice's source file, in slice order (a DICOM series' instances; a NIfTI volume's file).
        slice_probabilities: the classifier's probability of each slice (a volume explained whole by a 3D model,
            :func:`native_volume`: the volume's, the classifier's only one, for every slice).
        explained: whether each slice was explained (see :class:`~medxgan_monai.handlers.ExplanationHandler`).
        top_slice: the index of the most positive slice.
        strongest: the slices with the strongest evidence, most positive first, as ``(index, slice's
            ExplainedImage)`` (up to :data:`STRONGEST_SLICES`, explained slices only when any was), for the panel.
    """

    slice_axis: int
    slice_sources: list[str]
    slice_probabilities: list[float]
    explained: list[bool]
    top_slice: int
    strongest: list[tuple[int, ExplainedImage]] = field(default_factory=list)


#: how many slices :func:`stack_slices` keeps for the panel of a volume
STRONGEST_SLICES = 3


def stack_slices(
    stem: str, source: str, slices: list[ExplainedImage], axis: int, explained: list[bool]
) -> ExplainedImage:
    """One :class:`ExplainedImage` of a volume from its slices' (in slice order), with the volume's geometry.

    Every method's slices were normalized one by one (each to its own peak); stacked, they are brought back to one
    scale with their raw peaks (:func:`~medxgan_monai.explain.base.saliency_peak`), so the volume's map is at most 1,
    reached on the slice with the strongest raw evidence, and a weak slice stays weak.
    NIfTI volumes: each slice carries the volume's affine and shape (see
    :meth:`~medxgan_monai.transforms.LoadScan.load_slice`), and the slices' source-grid arrays stack along ``axis``
    back into that shape. DICOM series: the slices' own affines make the volume's: the first slice's, with the step
    from the first slice's origin to the last's, divided by the gaps, as the third column (the instances are sorted
    along the slice normal and evenly spaced: :func:`~medxgan_monai.io.series.read_dicom_series`).
    The volume's probability is the maximum over its slices (:func:`~medxgan_monai.data.volumes.volume_score`).
    """
    probabilities = [item.probability for item in slices]
    top = int(np.argmax(probabilities))
    first = slices[0]
    if first.source_format == "nifti":
        affine, shape = first.affine, first.shape
    else:
        affine = np.array(first.affine, dtype=np.float64)
        if len(slices) > 1:
            affine[:3, 2] = (np.asarray(slices[-1].affine)[:3, 3] - affine[:3, 3]) / (len(slices) - 1)
        shape = None
    best = slices[top]
    volume = ExplainedImage(
        stem=stem,
        source=source,
        source_format=first.source_format,
        affine=affine,
        shape=shape,
        image=best.image,
        probability=float(max(probabilities)),
        volume=ExplainedVolume(axis, [item.source for item in slices], probabilities, list(explained), top),
    )
    candidates = [k for k in range(len(slices)) if explained[k]] or list(range(len(slices)))
    ranked = sorted(candidates, key=lambda k: -probabilities[k])[:STRONGEST_SLICES]
    volume.volume.strongest = [(k, slices[k]) for k in ranked]
    for method, result in best.methods.items():
        # each slice's map was normalized to its own peak: back to one scale, the volume's largest peak at 1
        peaks = [item.methods[method].peak for item in slices]
        weights = np.ones(len(slices))
        if all(peak is not None for peak in peaks) and max(peaks) > 0:
            weights = np.asarray(peaks, dtype=np.float64) / max(peaks)
        stacked = np.stack(
            [
                item.methods[method].saliency_in_source_grid * np.float32(w)
                for item, w in zip(slices, weights, strict=True)
            ],
            axis=axis,
        )
        volume.methods[method] = ExplainedMethod(
            result.title, result.in_panel, result.saliency, stacked, result.counterfactual_name, result.sweep
        )
    for name, counterfactual in best.counterfactuals.items():
        stacked = np.stack([item.counterfactuals[name].in_source_grid for item in slices], axis=axis)
        volume.counterfactuals[name] = ExplainedCounterfactual(
            counterfactual.image, stacked, counterfactual.probability
        )
    return volume


def native_volume(item: ExplainedImage, slice_sources: list[str]) -> ExplainedImage:
    """A volume explained whole by a 3D model (``item``'s model-grid arrays are 3D), in the form every writer takes
    for a volume: the source-grid maps and counterfactuals stay whole (NIfTI, the DICOM series' Parametric Map and
    SEG); the panel shows the slices with the strongest evidence and the GIF the strongest one.

    Slices are along the last axis (a DICOM series' instances; a NIfTI volume's third axis). They are ranked by the
    sum of the first method's map over each slice of the model grid (the run's first method: the default map), and
    numbered in the source's slices (the model grid's slice ``k`` of ``K`` lies in source slice
    ``floor((k + 0.5) * n / K)`` of ``n``). A 3D classifier gives one probability, the volume's: every slice row of
    the panel shows it.

    Args:
        item: the volume's :class:`ExplainedImage`, arrays in both grids 3D, sweep frames ``(K, x, y, z)``.
        slice_sources: each source slice's file, in slice order (a series' instances; the NIfTI file repeated).
    """
    axis, count = 2, len(slice_sources)
    model_slices = item.image.shape[axis]
    if not item.methods:
        raise ValueError(f"{item.stem}: a volume without explanations")
    evidence = next(iter(item.methods.values())).saliency.sum(axis=(0, 1))
    ranked = [int(k) for k in np.argsort(-evidence, kind="stable")[:STRONGEST_SLICES]]

    def source_slice(k: int) -> int:
        return min(count - 1, int((k + 0.5) * count / model_slices))

    def model_slice(k: int, whole_volume: bool) -> ExplainedImage:
        """Slice ``k`` of the model grid as a 2D item; its source-grid arrays are the whole volume's, or the source
        slice that holds it."""
        piece = ExplainedImage(
            stem=item.stem,
            source=item.source,
            source_format=item.source_format,
            affine=item.affine,
            shape=item.shape,
            image=item.image[:, :, k],
            probability=item.probability,
        )
        for method, result in item.methods.items():
            sweep = None
            if result.sweep is not None:
                frames, probabilities, alphas = result.sweep
                sweep = (frames[..., k], probabilities, alphas)
            in_source = result.saliency_in_source_grid
            in_source = in_source if whole_volume else in_source[..., source_slice(k)]
            piece.methods[method] = ExplainedMethod(
                result.title, result.in_panel, result.saliency[:, :, k], in_source, result.counterfactual_name, sweep
            )
            piece.methods[method].peak = result.peak
        for name, counterfactual in item.counterfactuals.items():
            in_source = counterfactual.in_source_grid
            in_source = in_source if whole_volume else in_source[..., source_slice(k)]
            piece.counterfactuals[name] = ExplainedCounterfactual(
                counterfactual.image[:, :, k], in_source, counterfactual.probability
            )
        return piece

    top = ranked[0]
    volume = model_slice(top, whole_volume=True)
    volume.volume = ExplainedVolume(
        slice_axis=axis,
        slice_sources=list(slice_sources),
        slice_probabilities=[item.probability] * count,
        explained=[True] * count,
        top_slice=source_slice(top),
        strongest=[(source_slice(k), model_slice(k, whole_volume=False)) for k in ranked],
    )
    return volume


class NiftiMapWriter:
    """``<stem>_<method>.nii.gz``: every method's map (float, [0, 1]) in the source grid and geometry."""

    def __call__(self, item: ExplainedImage, folder: Path) -> None:
        for method, result in item.methods.items():
            _write_in_source_geometry(item, result.saliency_in_source_grid, folder / f"{item.stem}_{method}.nii.gz")


class NiftiCounterfactualWriter:
    """``<stem>_<name>.nii.gz``: each counterfactual image (``counterfactual``: G(z_a, 0);
    ``residual_counterfactual``: the refined residual one) in the source grid and geometry."""

    def __call__(self, item: ExplainedImage, folder: Path) -> None:
        for name, counterfactual in item.counterfactuals.items():
            _write_in_source_geometry(item, counterfactual.in_source_grid, folder / f"{item.stem}_{name}.nii.gz")


def _write_in_source_geometry(item: ExplainedImage, array: np.ndarray, path: Path) -> None:
    write_nifti(array.reshape(item.shape or array.shape), item.affine, path, overwrite=False)


class PanelWriter:
    """``<stem>_panel.png``: the image, the counterfactual of the first panel method that has one, and the maps of
    the panel methods over the image (captioned with the methods' titles), in the model's grid. A volume: one such
    row for each of its slices with the strongest evidence (the most positive ones, up to ``slices_shown``)."""

    def __init__(self, slices_shown: int = 3) -> None:
        self.slices_shown = slices_shown

    def __call__(self, item: ExplainedImage, folder: Path) -> None:
        if item.volume is None:
            rows = [self._row(item, f"image\np={item.probability:.2f}")]
        else:
            count = len(item.volume.slice_sources)
            rows = [
                self._row(piece, f"slice {index} of {count}\np={piece.probability:.2f}")
                for index, piece in item.volume.strongest[: self.slices_shown]
            ]
        write_panel_rows(folder / f"{item.stem}_panel.png", rows, overwrite=False)

    @staticmethod
    def _row(item: ExplainedImage, caption: str) -> tuple:
        shown = {m: r for m, r in item.methods.items() if r.in_panel}
        captions = {"image": caption} | {m: r.title for m, r in shown.items()}
        counterfactual = np.zeros_like(item.image)
        names = [r.counterfactual_name for r in shown.values() if r.counterfactual_name in item.counterfactuals]
        if names:
            shown_counterfactual = item.counterfactuals[names[0]]
            counterfactual = shown_counterfactual.image
            label = names[0].replace("_", " ")
            captions["counterfactual"] = f"{label}\np={shown_counterfactual.probability:.2f}"
        # MONAI's arrays are (x, y): transpose so the PNG shows rows as a viewer would
        return item.image.T, counterfactual.T, {m: r.saliency.T for m, r in shown.items()}, captions


class SweepWriter:
    """``<stem>_sweep.gif``: the interpolation sweep from the counterfactual to the reconstruction, with each
    frame's probability (from the first method that walks a latent path, ``medxgan``)."""

    def __call__(self, item: ExplainedImage, folder: Path) -> None:
        sweeps = [r.sweep for r in item.methods.values() if r.sweep is not None]
        if sweeps:
            frames, probabilities, alphas = sweeps[0]
            write_sweep_gif(folder / f"{item.stem}_sweep.gif", frames, probabilities, alphas, overwrite=False)


class DicomDerivedWriter:
    """For DICOM sources, new series of the source study: a Parametric Map (``<stem>_<method>_pm.dcm``) of
    ``method``'s map (the run's first map when it does not compute ``method``) and, with ``overlay``, a Secondary
    Capture of the map over the image (``<stem>_overlay_sc.dcm``). For a DICOM volume (a series of single-frame
    instances, or an enhanced multi-frame instance): one multi-frame Parametric Map and one Segmentation
    (``<stem>_<method>_seg.dcm``: where the map is at least ``segment_threshold``) for the whole volume, each frame
    referencing its source instance (and frame), and with ``volume_overlay`` one series of Secondary Captures, one per
    slice (``<stem>_overlay_sc_<slice number>.dcm``, in one intensity window for the whole volume). A volume's derived
    series have Series Instance UIDs derived from the source series' and the method (:func:`_derived_series_uids`):
    explained again, its new objects join the same three series.

    The source is read for its header (the study, patient and frame of reference the new series reference) and, for
    the overlays, its pixels (the picture at full resolution, through the project's loader: rescaled, MONOCHROME1
    inverted).

    Args:
        method: the method whose map is stored.
        overlay: write the Secondary Capture of a 2D image.
        segment_threshold: in (0, 1], the map value from which a pixel of a volume is in the Segmentation.
        volume_overlay: write the Secondary Capture series of a volume (off by default: a series of pictures that a
            viewer can draw from the Parametric Map; on request for PACS viewers that cannot).
    """

    def __init__(
        self,
        method: str = "medxgan_ig",
        overlay: bool = True,
        segment_threshold: float = 0.5,
        volume_overlay: bool = False,
    ) -> None:
        self.method, self.overlay, self.segment_threshold = method, overlay, segment_threshold
        self.volume_overlay = volume_overlay

    def __call__(self, item: ExplainedImage, folder: Path) -> None:
        if item.source_format != "dicom" or not item.methods:
            return
        import pydicom

        method = self.method if self.method in item.methods else next(iter(item.methods))
        if item.volume is not None:
            self._write_series(item, method, folder)
            return
        dataset = pydicom.dcmread(item.source, stop_before_pixels=True)
        # MONAI's pydicom reader returns (columns, rows); DICOM pixel data is (rows, columns)
        saliency_rows = np.clip(item.methods[method].saliency_in_source_grid.T, 0, 1)
        if self.overlay:
            from medxgan_monai.transforms.io import load_scan

            pixels = load_scan(item.source)[0].numpy().T
            overlay = saliency_overlay(_windowed(pixels, pixels), saliency_rows)
            write_overlay_secondary_capture(dataset, overlay, folder / f"{item.stem}_overlay_sc.dcm", overwrite=False)
        write_saliency_parametric_map(dataset, saliency_rows, folder / f"{item.stem}_{method}_pm.dcm", overwrite=False)

    def _write_series(self, item: ExplainedImage, method: str, folder: Path) -> None:
        """A DICOM volume: one multi-frame Parametric Map and one Segmentation of the map above
        ``segment_threshold``, each frame derived from its source instance (or frame), and with ``volume_overlay``
        the Secondary Capture series."""
        import pydicom

        from medxgan_monai.io.series import read_dicom_multiframe

        files = item.volume.slice_sources
        # (columns, rows, slices) in MONAI's layout; DICOM frames are (rows, columns)
        maps = np.clip(np.moveaxis(item.methods[method].saliency_in_source_grid, 2, 0).transpose(0, 2, 1), 0, 1)
        if len(set(files)) == 1:  # an enhanced multi-frame instance: its frames, sorted along the normal
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            frame_numbers = read_dicom_multiframe(header, origin=files[0]).frames
            sources = [header]
            in_frame_order = np.empty_like(maps)
            in_frame_order[np.asarray(frame_numbers) - 1] = maps
            stored = in_frame_order
            slice_headers = [frame_header(header, frame) for frame in frame_numbers]
        else:
            sources = slice_headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
            frame_numbers, stored = [None] * len(files), maps
        series = _derived_series_uids(sources[0], method)
        write_series_parametric_map(
            sources, stored, folder / f"{item.stem}_{method}_pm.dcm", overwrite=False, series_instance_uid=series[0]
        )
        segmentation = folder / f"{item.stem}_{method}_seg.dcm"
        write_series_segmentation(
            sources, stored, segmentation, self.segment_threshold, overwrite=False, series_instance_uid=series[1]
        )
        if self.volume_overlay:
            self._write_overlay_series(item, slice_headers, frame_numbers, maps, folder, series[2])

    @staticmethod
    def _write_overlay_series(
        item: ExplainedImage, headers: list, frame_numbers: list, maps: np.ndarray, folder: Path, series_uid: str
    ) -> None:
        """One Secondary Capture per slice, in one series, slice ``k`` numbered ``k + 1``."""
        from medxgan_monai.transforms.io import LoadScan

        loader, files = LoadScan(), item.volume.slice_sources
        pictures = [
            (loader(path) if frame is None else loader.load_frame(path, index))[0].numpy().T
            for index, (path, frame) in enumerate(zip(files, frame_numbers, strict=True))
        ]
        volume = np.stack(pictures)
        for index, (header, frame, picture) in enumerate(zip(headers, frame_numbers, pictures, strict=True)):
            write_overlay_secondary_capture(
                header,
                saliency_overlay(_windowed(picture, volume), maps[index]),
                folder / f"{item.stem}_overlay_sc_{index + 1:04d}.dcm",
                overwrite=False,
                series_instance_uid=series_uid,
                instance_number=index + 1,
                referenced_frame=frame,
            )


def _derived_series_uids(source, method: str) -> tuple[str, str, str]:
    """The Series Instance UIDs of a source series' Parametric Map, Segmentation and overlay series: derived from
    the source's Series Instance UID and the method, so that a volume explained again (a late instance of the series
    makes the node explain it again, complete) adds its objects to the same derived series instead of new ones; new
    random UIDs when the source has none."""
    from pydicom.uid import generate_uid

    source_series = str(source.get("SeriesInstanceUID", "") or "")
    kinds = ("parametric map", "segmentation", "overlay")
    if not source_series:
        return tuple(generate_uid() for _ in kinds)
    return tuple(generate_uid(entropy_srcs=[source_series, "medxgan-monai", kind, method]) for kind in kinds)


def _windowed(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``pixels`` scaled to [0, 1] for display, between the 0.5th and 99.5th percentiles of ``reference`` (the
    image itself, or its whole volume so that every slice shares one window)."""
    low, high = np.percentile(reference, (0.5, 99.5))
    return np.clip((pixels - low) / max(high - low, 1e-6), 0, 1)


def default_writers() -> list:
    """Every output kind, as ``inference.json`` lists them."""
    return [NiftiMapWriter(), NiftiCounterfactualWriter(), PanelWriter(), SweepWriter(), DicomDerivedWriter()]
