"""Explain spooled DICOM instances with the inference bundle and deliver the results to a destination."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
import torch
from pydicom.dataset import Dataset

from medxgan_monai.bundle import DEFAULT_BUNDLE, InferencePipeline
from medxgan_monai.io.explanation_outputs import DicomDerivedWriter
from medxgan_monai.io.ledger import OutputLedger
from medxgan_monai.node.spool import Spool, instance_problem, is_valid_uid, valid_instance_uid

__all__ = ["DEFAULT_MODALITIES", "DeliveryError", "ExplanationProcessor", "NodeStatistics", "ResultSink"]

#: modalities of 2D images a node accepts by default
DEFAULT_MODALITIES = ("MR", "CT", "CR", "DX", "MG", "OT")

logger = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """Results could not be delivered; the instance stays queued and is retried."""


class ResultSink(Protocol):
    """Where explanations go: ``send(paths)`` delivers DICOM files or raises :class:`DeliveryError`."""

    def send(self, paths: Sequence[Path]) -> None: ...


@dataclass
class NodeStatistics:
    """Counts of instances by outcome and the seconds spent, for logs and MLflow."""

    received: int = 0
    skipped: int = 0
    explained: int = 0
    failed: int = 0
    delivery_failures: int = 0
    explain_seconds: list[float] = field(default_factory=list)
    latency_seconds: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        counts = {k: float(v) for k, v in asdict(self).items() if isinstance(v, int)}
        for name in ("explain_seconds", "latency_seconds"):
            values = getattr(self, name)
            if values:
                counts[f"mean_{name}"] = sum(values) / len(values)
        return counts


def default_torch_threads() -> int:
    """Intra-op threads for the node's explanations: one core fewer than the process may use (at least 1), so the
    node's receiving and sending threads, and a PACS on the same machine, keep a core. On 2 cores, PyTorch's default
    of 2 threads made the node explain 2.5x slower per image than the bundle alone while Orthanc and the DIMSE
    server ran beside it (``scripts/benchmark_node.py``)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, available - 1)


@dataclass
class _Unit:
    """What one bundle input explains: one instance, or a series (its instances linked into one folder)."""

    stem: str  # the bundle's output stem: the SOP Instance UID, or the series' UID (and _<version> after the first)
    paths: list[Path]  # the spooled instances this unit finishes
    source: Path  # what the bundle reads: the instance, or the series' folder of links
    received_at: float  # when the (last) instance arrived
    series: tuple[str, int, list[str]] | None = None  # a series: its UID, version and every instance's file name

    def describe(self) -> str:
        if self.series is None:
            return f"instance {self.stem}"
        uid, version, instances = self.series
        return f"series {uid} ({len(instances)} instances{f', version {version}' if version > 1 else ''})"


class ExplanationProcessor:
    """Accept DICOM instances into a :class:`Spool`, explain the queue in batches with the inference bundle, and
    deliver each instance's Parametric Map (and, with ``overlay``, its Secondary Capture) to a :class:`ResultSink`.

    An instance that does not fit (see :func:`instance_problem`) is logged and skipped; one without a valid SOP Instance
    UID is refused (:class:`~medxgan_monai.node.spool.InvalidUIDError`); one the bundle cannot explain goes to
    ``failed`` with the reason in the log; one whose results cannot be delivered goes back to the queue.

    Delivery is at least once, with identical objects: the bundle's ledger (``results/.medxgan_ledger``) keeps each
    instance's committed results, so an instance explained before a crash is not explained again, and a delivery cut
    off by a crash (even one the destination had already stored) is repeated with the same files, hence the same SOP
    Instance UIDs, which the destination recognises as the same objects. Log lines and MLflow carry SOP Instance UIDs
    and timings, never patient identifiers.

    Args:
        spool: the node's spool.
        sink: where results go.
        overrides: inference-bundle overrides (``methods``, weights, ``device``, ...).
        modalities: modalities accepted (``None``: any).
        batch_size: instances explained per bundle run.
        tracking_uri: MLflow tracking URI of the node's run, one per node (``None``: no tracking). The bundle runs of
            its batches are not tracked on their own: the node's run holds its settings as parameters and, per batch,
            the counts and timings as metrics and the batch's ``predictions.csv`` and ``errors.csv`` as artifacts
            (``batch_<step>/``), logged after the batch's results were delivered.
        torch_threads: PyTorch intra-op threads while explaining (default :func:`default_torch_threads`).
        series_quiet_seconds: explain by series: the instances of a series are explained together, as one volume
            (one multi-frame Parametric Map and one Segmentation back), once no instance of it has arrived for this
            many seconds or its ImagesInAcquisition have all arrived. An instance that arrives after its series was
            explained makes the series be explained again, with every instance (version 2, 3, ...: a new Parametric
            Map and Segmentation in the same two derived series). ``None`` (default): instance by instance.
        overlay: also send a Secondary Capture of the map over each image. Off by default: the Parametric Map
            carries the map, and each further object costs the PACS a C-STORE (~50 ms to Orthanc on loopback).

    Example::

        processor = ExplanationProcessor(Spool("spool/"), DimseSender("127.0.0.1", 4242, "ORTHANC"))
        processor.accept(dataset)
        processor.process_pending()
    """

    def __init__(
        self,
        spool: Spool,
        sink: ResultSink,
        overrides: dict | None = None,
        bundle_root: str | os.PathLike = DEFAULT_BUNDLE,
        modalities: Sequence[str] | None = DEFAULT_MODALITIES,
        batch_size: int = 16,
        tracking_uri: str | None = None,
        experiment_name: str = "medxgan_node",
        parameters: dict | None = None,
        torch_threads: int | None = None,
        overlay: bool = False,
        series_quiet_seconds: float | None = None,
    ) -> None:
        self.spool, self.sink = spool, sink
        self.torch_threads = torch_threads or default_torch_threads()
        self.overrides = dict(overrides or {})
        self.bundle_root = bundle_root
        self.modalities = tuple(modalities) if modalities else None
        self.batch_size = batch_size
        if series_quiet_seconds is not None and series_quiet_seconds < 0:
            raise ValueError(f"series_quiet_seconds must be >= 0, not {series_quiet_seconds}")
        self.series_quiet_seconds = series_quiet_seconds
        self._series_info: dict[str, tuple[str, int]] = {}  # spooled file name -> (series UID, ImagesInAcquisition)
        #: when (``time.time()``) the first series still arriving at the end of the last pass becomes complete by its
        #: quiet time; ``None`` when none is waiting (a worker sleeps until then instead of a whole poll interval)
        self.next_series_ready: float | None = None
        self.statistics = NodeStatistics()
        self._lock = threading.Lock()
        self._tracking = _NodeRun(tracking_uri, experiment_name, parameters or {}) if tracking_uri else None
        # the batches are tracked by the node's own run, after their results are delivered: an MLflow run per batch
        # cost ~0.15 s of every instance's latency before delivery (scripts/benchmark_node.py)
        # the node writes only what it delivers (the bundle's NIfTI maps, panels and GIFs would pile up unread)
        writer = DicomDerivedWriter(overlay=overlay, volume_overlay=overlay)
        fixed = {"tracking_uri": None, "writers": [writer], **self.overrides}
        # one warm pipeline for the node's life: the config is parsed per batch, the weights are read once
        self.pipeline = InferencePipeline(fixed, bundle_root)

    def accept(self, dataset: Dataset) -> str | None:
        """Queue ``dataset`` if it fits; returns the reason when it was skipped (``None`` when queued).

        Raises:
            InvalidUIDError: its SOP Instance UID is missing or not a valid UID; nothing is stored.
            Exception: a value the fit check must read cannot be read (e.g. NumberOfFrames that is no number);
                nothing is stored (a C-STORE answers 0xC000, a DICOMweb pull skips the instance).
        """
        try:
            uid = valid_instance_uid(dataset)  # before the UID is logged or names a file
        except ValueError:
            self._count(skipped=1)
            raise
        try:
            problem = instance_problem(dataset, self.modalities)
        except Exception:  # a value the check cannot read: counted, and refused by the caller
            self._count(skipped=1)
            raise
        with self._lock:
            if problem is None and self.spool.put(dataset) is not None:
                self.statistics.received += 1
                logger.info("received %s", uid)
                return None
            self.statistics.skipped += 1
        problem = problem or "already received"
        logger.warning("skipping %s: %s", uid, problem)
        return problem

    def process_pending(self) -> int:
        """Explain and deliver the queued instances, ``batch_size`` at a time, and those that arrive meanwhile;
        returns how many were handled. A second thread delivers each instance's results as soon as the bundle has
        committed them, while the bundle explains the rest of its batch and the next batch, so the destination's
        C-STOREs overlap the explanations. Each instance is tried once per call: one whose delivery fails is queued
        again when the call ends, for a later call.

        With ``series_quiet_seconds``, one pass takes the queue as it is: the instances of a series whose last
        instance arrived at least that long ago (or whose ImagesInAcquisition have all arrived) are explained as one
        volume; a series still arriving goes back to the queue for a later call."""
        handled, undelivered, postponed, deliveries = 0, [], [], []
        self.next_series_ready = None
        if self.series_quiet_seconds is None:
            claims = iter(lambda: self.spool.claim(limit=self.batch_size), [])
        else:
            claims = iter([self.spool.claim()])
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medxgan-delivery") as delivery:

            def deliver(unit: _Unit, outputs: list[Path]) -> None:
                deliveries.append(delivery.submit(self._deliver, unit, outputs, undelivered))

            for claimed in claims:
                units, waiting = self._units(claimed)
                postponed += waiting
                for start in range(0, len(units), self.batch_size):
                    batch = units[start : start + self.batch_size]
                    handled += sum(len(unit.paths) for unit in batch)
                    self._process(batch, deliver)
                    if self._tracking is not None:  # after the batch's deliveries (one delivery thread, in order)
                        tables = {path.name: path.read_text() for path in self._run_tables()}
                        deliveries.append(delivery.submit(self._log_batch, tables))
        for path in undelivered + postponed:
            self.spool.release(path)
        for finished in deliveries:
            finished.result()  # an unexpected error of the delivery thread is raised here, not lost
        return handled

    def _units(self, claimed: list[Path]) -> tuple[list[_Unit], list[Path]]:
        """What the bundle explains: each instance alone, or (series mode) each complete series as one volume
        (a series of one instance: that instance alone); and the instances of series still arriving."""
        if self.series_quiet_seconds is None:
            return [_Unit(path.stem, [path], path, path.stat().st_mtime) for path in claimed], []
        groups: dict[str, list[Path]] = {}
        for path in claimed:
            groups.setdefault(self._series_of(path), []).append(path)
        units, waiting, now = [], [], time.time()
        for series_uid, paths in groups.items():
            newest = max(path.stat().st_mtime for path in paths)
            expected = self._series_info[paths[0].name][1]
            earlier = self.spool.explained_series(series_uid) if series_uid else None
            if now - newest < self.series_quiet_seconds and not (expected and len(paths) >= expected):
                waiting += paths
                ready = newest + self.series_quiet_seconds
                self.next_series_ready = min(ready, self.next_series_ready or ready)
            elif earlier is not None:  # late instances of a series explained before: the series again, complete
                version = earlier["version"] + 1
                done = [self.spool.folder("done") / name for name in earlier["instances"]]
                links = [path for path in done if path.is_file()] + sorted(paths)
                stem = f"{series_uid}_{version}"
                series = (series_uid, version, [path.name for path in links])
                units.append(_Unit(stem, sorted(paths), self._series_folder(stem, links), newest, series))
            elif len(paths) == 1 or not series_uid:
                units += [_Unit(path.stem, [path], path, path.stat().st_mtime) for path in paths]
            else:
                series = (series_uid, 1, [path.name for path in paths])
                units.append(_Unit(series_uid, sorted(paths), self._series_folder(series_uid, paths), newest, series))
        return units, waiting

    def _series_of(self, path: Path) -> str:
        """The instance's Series Instance UID, read once; "" (explained alone) when it has no valid one, and for a
        multi-frame instance, which is a volume of its own."""
        if path.name not in self._series_info:
            header = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["SeriesInstanceUID", "ImagesInAcquisition", "NumberOfFrames"],
            )
            multi_frame = int(header.get("NumberOfFrames") or 1) > 1
            uid = "" if multi_frame else str(header.get("SeriesInstanceUID", ""))
            try:
                expected = int(header.get("ImagesInAcquisition") or 0)
            except (TypeError, ValueError):
                expected = 0
            self._series_info[path.name] = (uid if is_valid_uid(uid) else "", expected)
        return self._series_info[path.name][0]

    def _series_folder(self, name: str, paths: list[Path]) -> Path:
        """A folder ``name`` (the unit's stem) of hard links to a series' spooled instances: the bundle reads it as
        one DICOM series."""
        folder = self.spool.root / "series" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path in paths:
            try:
                os.link(path, folder / path.name)
            except OSError:  # a file system without hard links
                shutil.copy2(path, folder / path.name)
        return folder

    def _process(self, units: list[_Unit], deliver: Callable[[_Unit, list[Path]], None]) -> None:
        """Explain ``units``; each goes to ``deliver`` with its DICOM results as soon as they are committed (one
        already explained before a restart: after the run, from the ledger)."""
        waiting = {unit.stem: unit for unit in units}

        def committed(stem: str, files: list[Path]) -> None:
            if (unit := waiting.pop(stem, None)) is not None:
                deliver(unit, [file for file in files if file.suffix == ".dcm"])

        start = time.perf_counter()
        torch.set_num_threads(self.torch_threads)  # in the thread that explains
        run = {"input": [str(unit.source) for unit in units], "output_dir": str(self.spool.results)}
        try:
            report = self.pipeline.run({**run, "ledger#on_commit": committed})
            problems = {p.stem: p.problem for p in report.problems}
        except Exception as error:  # the node must outlive any failure of one batch
            logger.exception("explaining a batch of %d unit(s) failed", len(units))
            problems = {unit.stem: f"{type(error).__name__}: {error}" for unit in units}
        finally:
            for unit in units:
                if unit.source.is_dir():
                    shutil.rmtree(unit.source, ignore_errors=True)
        instances = sum(len(unit.paths) for unit in units)
        seconds = (time.perf_counter() - start) / instances
        with self._lock:
            explained = sum(len(unit.paths) for unit in units if unit.stem not in problems)
            self.statistics.explain_seconds += [seconds] * explained
        ledger = OutputLedger(self.spool.results)
        for stem, unit in waiting.items():
            if stem in problems:
                for path in unit.paths:
                    self.spool.finish(path, succeeded=False)
                self._count(failed=len(unit.paths))
                logger.error("%s could not be explained: %s", unit.describe(), problems[stem])
                continue
            record = ledger.completed(stem) or {}
            deliver(unit, [self.spool.results / name for name in record.get("files", []) if name.endswith(".dcm")])

    def _deliver(self, unit: _Unit, outputs: list[Path], undelivered: list[Path]) -> None:
        try:
            if not outputs:
                raise DeliveryError(f"no DICOM results for {unit.describe()}")
            self.sink.send(outputs)
        except Exception as error:  # the destination may be down: keep the instances for a later call
            undelivered += unit.paths
            self._count(delivery_failures=1)
            logger.error("%s: delivering %d result(s) failed: %s", unit.describe(), len(outputs), error)
            return
        for path in unit.paths:
            self.spool.finish(path, succeeded=True)
        if unit.series is not None:
            self.spool.record_series(*unit.series)
        latency = time.time() - unit.received_at
        with self._lock:
            self.statistics.explained += len(unit.paths)
            self.statistics.latency_seconds.append(latency)
        logger.info("%s: %d result(s) delivered %.2f s after receipt", unit.describe(), len(outputs), latency)

    def _log_batch(self, tables: dict[str, str]) -> None:
        self._tracking.log(self.statistics.metrics(), tables)

    def _run_tables(self) -> list[Path]:
        """The last batch's ``predictions.csv`` and ``errors.csv`` (each bundle run writes its own)."""
        return [
            path for path in (self.spool.results / name for name in ("predictions.csv", "errors.csv")) if path.is_file()
        ]

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.statistics, name, getattr(self.statistics, name) + value)

    def close(self) -> None:
        """Log the final statistics and end the MLflow run."""
        logger.info("node statistics: %s", self.statistics.metrics())
        if self._tracking is not None:
            self._tracking.close(self.statistics.metrics())


class _NodeRun:
    """One MLflow run for a node's lifetime: settings as parameters, outcome counts and timings as metrics."""

    def __init__(self, uri: str, experiment_name: str, parameters: dict) -> None:
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment_name = uri, experiment_name
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        self.run_id = self.client.create_run(experiment_id, run_name=time.strftime("node_%Y%m%d_%H%M%S")).info.run_id
        for key, value in parameters.items():
            self.client.log_param(self.run_id, key, str(value))
        self.step = 0

    def log(self, metrics: dict[str, float], texts: dict[str, str] | None = None) -> None:
        """Metrics at the next step; ``texts`` (file name to content) as artifacts under ``batch_<step>/``."""
        self.step += 1
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value, step=self.step)
        for name, text in (texts or {}).items():
            self.client.log_text(self.run_id, text, f"batch_{self.step:06d}/{name}")

    def close(self, metrics: dict[str, float]) -> None:
        self.log(metrics)
        self.client.set_terminated(self.run_id)
