"""The DICOM node: spool, processor (restart, delivery failures), and end to end against a real Orthanc server over
DIMSE (C-STORE both ways) and DICOMweb (WADO-RS in, STOW-RS out)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import TINY_BUNDLE, brain_like
from mlflow.tracking import MlflowClient
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from medxgan_monai.io import MRSliceGeometry, SyntheticPatient, write_mr_slice
from medxgan_monai.node import (
    DeliveryError,
    DicomNode,
    DimseSender,
    ExplanationProcessor,
    OrthancServer,
    Spool,
    StowSender,
    explain_study,
    instance_problem,
)
from medxgan_monai.node.orthanc import free_port

needs_orthanc = pytest.mark.skipif(
    OrthancServer.executable() is None,
    reason="Orthanc is not installed: apt-get install orthanc orthanc-dicomweb (.ci/run does)",
)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    """Three MR slices of one study."""
    folder = tmp_path_factory.mktemp("study")
    patient = SyntheticPatient("NODE-TEST", "NODE^TEST")
    paths = []
    for index in range(3):
        path = folder / f"slice_{index}.dcm"
        pixels = brain_like((36, 40), seed=index).astype(np.uint16)
        write_mr_slice(pixels, MRSliceGeometry((0.0, 0.0, 5.0 * index)), patient, path, instance_number=index + 1)
        paths.append(path)
    return paths


class Collector:
    """A result sink that keeps what it is sent, or fails while ``down``."""

    def __init__(self) -> None:
        self.sent: list[pydicom.Dataset] = []
        self.down = False

    def send(self, paths) -> None:
        if self.down:
            raise DeliveryError("destination down")
        self.sent += [pydicom.dcmread(path) for path in paths]


def _processor(spool_dir: Path, sink, weights, **options) -> ExplanationProcessor:
    overrides = {**TINY_BUNDLE, **weights, "methods": ["medxgan"], "device": "cpu"}
    return ExplanationProcessor(Spool(spool_dir), sink, overrides, **options)


def test_instances_that_do_not_fit_are_named(study):
    ds = pydicom.dcmread(study[0])
    assert instance_problem(ds) is None
    assert "modality MR" in instance_problem(ds, ("CT",))
    assert "multi-frame" in instance_problem(pydicom.dcmread(get_testdata_file("emri_small.dcm")))
    assert "no pixel data" in instance_problem(pydicom.dcmread(get_testdata_file("rtplan.dcm")))
    ds.Manufacturer = "medxgan-monai"
    assert "made by medxgan-monai" in instance_problem(ds)


def test_spool_moves_are_atomic_and_resends_are_not_queued_twice(study, tmp_path):
    spool = Spool(tmp_path / "spool")
    assert spool.put_file(study[0]) is not None and spool.put_file(study[0]) is None
    spool.put_file(study[1])
    (claimed, *_) = spool.claim(limit=1)
    assert spool.counts() == {"incoming": 1, "processing": 1, "done": 0, "failed": 0}
    assert spool.recover() == 1 and spool.counts()["incoming"] == 2
    for path in spool.claim():
        spool.finish(path, succeeded=True)
    assert spool.put_file(study[0]) is None, "an instance already explained is not explained again"


def test_processor_explains_delivers_retries_and_resumes_after_a_crash(study, weights, tmp_path):
    sink = Collector()
    tracking = f"sqlite:///{tmp_path / 'node.db'}"
    processor = _processor(tmp_path / "spool", sink, weights, tracking_uri=tracking, overlay=True)
    for path in study[:2]:
        assert processor.accept(pydicom.dcmread(path)) is None
    assert "no pixel data" in processor.accept(pydicom.dcmread(get_testdata_file("rtplan.dcm")))
    sink.down = True
    assert processor.process_pending() == 2, "each queued instance is tried once per pass"
    assert processor.statistics.delivery_failures == 2 and processor.spool.counts()["incoming"] == 2
    sink.down = False
    assert processor.process_pending() == 2
    assert processor.statistics.explained == 2 and processor.statistics.skipped == 1
    sources = {pydicom.dcmread(p).SOPInstanceUID for p in study[:2]}
    assert len(sink.sent) == 4 and {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in sink.sent} == sources
    assert {ds.SOPClassUID.name for ds in sink.sent} == {"Secondary Capture Image Storage", "Parametric Map Storage"}
    assert {ds.StudyInstanceUID for ds in sink.sent} == {pydicom.dcmread(study[0]).StudyInstanceUID}

    # a crash after explaining but before delivery: the restart delivers the same results, explains nothing again
    processor.accept(pydicom.dcmread(study[2]))
    sink.down = True
    processor.process_pending()  # explained, delivery failed, queued again
    processor.spool.claim()  # the process dies after claiming it once more
    first = {p.name: p.read_bytes() for p in (tmp_path / "spool" / "results").glob("*.dcm")}
    restarted = _processor(tmp_path / "spool", sink, weights, overlay=True)
    assert restarted.spool.recover() == 1
    sink.down = False
    assert restarted.process_pending() == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "spool" / "results").glob("*.dcm")} == first
    assert len(sink.sent) == 6 and len({ds.SOPInstanceUID for ds in sink.sent}) == 6
    processor.close()
    client = MlflowClient(tracking_uri=tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("medxgan_node").experiment_id])
    assert run.data.metrics["explained"] == 2 and run.data.metrics["skipped"] == 1
    experiments = {experiment.name for experiment in client.search_experiments()}
    assert experiments <= {"medxgan_node", "Default"}, (
        "the batches are tracked by the node's run, not runs of their own"
    )
    batches = [entry.path for entry in client.list_artifacts(run.info.run_id)]
    assert len(batches) == 3, "one artifact folder per batch"
    (table,) = [entry.path for entry in client.list_artifacts(run.info.run_id, batches[0])]
    assert table.endswith("predictions.csv")
    tracked = (tmp_path / "node.db").read_bytes()
    assert b"NODE-TEST" not in tracked and b"NODE^TEST" not in tracked, "no patient identifier in MLflow"


def _wait_for(condition, seconds: float = 90.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def _derived_series(orthanc: OrthancServer, study_uid: str) -> list[dict]:
    (study_id,) = orthanc.rest("/tools/lookup", data=study_uid.encode())
    series = orthanc.rest(f"/studies/{study_id['ID']}/series")
    return [s for s in series if "medXGAN" in s["MainDicomTags"].get("SeriesDescription", "")]


@needs_orthanc
def test_orthanc_routes_a_study_to_the_node_and_gets_the_explanations_back(study, weights, tmp_path):
    node_port = free_port()
    modalities = {"medxgan": ("MEDXGAN", "127.0.0.1", node_port)}
    with OrthancServer(tmp_path / "orthanc", modalities=modalities) as orthanc:
        sender = DimseSender("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, calling_ae_title="MEDXGAN")
        processor = _processor(tmp_path / "spool", sender, weights)
        node = DicomNode(processor, "MEDXGAN", node_port, allowed_calling_ae_titles=[orthanc.ae_title])
        node.start()
        try:
            intruder = AE(ae_title="INTRUDER")
            intruder.add_requested_context(MRImageStorage)
            association = intruder.associate("127.0.0.1", node_port, ae_title="MEDXGAN")
            assert association.is_rejected, "calling AE titles outside the allowed list are rejected"

            ids = [orthanc.upload(path) for path in study[:2]]
            orthanc.send_to_modality("medxgan", ids)
            study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
            derived = _wait_for(lambda: len(s := _derived_series(orthanc, study_uid)) == 2 and s)
        finally:
            node.stop()
        sources = {pydicom.dcmread(p).SOPInstanceUID for p in study[:2]}
        referenced = set()
        for series in derived:
            (instance,) = series["Instances"]
            tags = orthanc.rest(f"/instances/{instance}/tags?simplify")
            assert tags["StudyInstanceUID"] == study_uid
            referenced.add(tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"])
            assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.30", "a Parametric Map each, no overlay"
            assert tags["Modality"] in ("OT", "MR") and "NOT FOR CLINICAL USE" in tags["SeriesDescription"]
        assert referenced == sources
        assert processor.statistics.explained == 2 and processor.statistics.failed == 0


@needs_orthanc
def test_a_series_routed_by_orthanc_comes_back_as_one_map_series_and_one_segmentation_series(weights, tmp_path):
    series = _series_slices(tmp_path / "series", 4)
    node_port = free_port()
    with OrthancServer(tmp_path / "orthanc", modalities={"medxgan": ("MEDXGAN", "127.0.0.1", node_port)}) as orthanc:
        sender = DimseSender("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, calling_ae_title="MEDXGAN")
        processor = _processor(tmp_path / "spool", sender, weights, series_quiet_seconds=1.0)
        node = DicomNode(processor, "MEDXGAN", node_port, allowed_calling_ae_titles=[orthanc.ae_title])
        node.start()
        try:
            orthanc.send_to_modality("medxgan", [orthanc.upload(path) for path in series])
            study_uid = pydicom.dcmread(series[0]).StudyInstanceUID
            derived = _wait_for(lambda: len(s := _derived_series(orthanc, study_uid)) == 2 and s)
            time.sleep(2)  # nothing more arrives: one series per kind, not one per slice
            assert len(_derived_series(orthanc, study_uid)) == 2
        finally:
            node.stop()
        classes = set()
        for entry in derived:
            (instance,) = entry["Instances"]
            tags = orthanc.rest(f"/instances/{instance}/tags?simplify")
            classes.add(tags["SOPClassUID"])
            assert tags["FrameOfReferenceUID"] == pydicom.dcmread(series[0]).FrameOfReferenceUID
            assert int(tags["NumberOfFrames"]) == 4
        assert classes == {"1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4"}, "a Parametric Map, a SEG"
        assert processor.statistics.explained == 4 and processor.statistics.failed == 0


@needs_orthanc
def test_a_study_pulled_over_dicomweb_gets_its_explanations_stored_back(study, weights, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    with OrthancServer(tmp_path / "orthanc") as orthanc:
        for path in study:
            orthanc.upload(path)
        client = DICOMwebClient(f"{orthanc.url}/dicom-web")
        study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
        statistics = explain_study(client, study_uid, _processor(tmp_path / "spool", StowSender(client), weights))
        assert statistics.explained == 3 and statistics.failed == 0
        assert len(_derived_series(orthanc, study_uid)) == 3


def test_command_line_rejects_a_malformed_destination(tmp_path, capsys):
    from medxgan_monai.cli.node import main

    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--spool", str(tmp_path), "--destination", "ORTHANC-without-address"])
    assert exit_status.value.code == 2 and "AE_TITLE@HOST:PORT" in capsys.readouterr().err


def _series_slices(folder: Path, count: int, patient: SyntheticPatient | None = None) -> list[Path]:
    """``count`` parallel MR slices of ``patient``'s series (default: of one new series), 4 mm apart."""
    folder.mkdir(parents=True)
    patient = patient or SyntheticPatient("SERIES-TEST", "SERIES^TEST")
    paths = []
    for index in range(count):
        path = folder / f"slice_{index}.dcm"
        pixels = brain_like((36, 40), seed=10 + index).astype(np.uint16)
        write_mr_slice(pixels, MRSliceGeometry((0.0, 0.0, 4.0 * index)), patient, path, instance_number=index + 1)
        paths.append(path)
    return paths


def test_by_series_a_complete_series_is_one_volume_and_a_series_still_arriving_waits(study, weights, tmp_path):
    series = _series_slices(tmp_path / "series", 4)
    sink = Collector()
    waiting = _processor(tmp_path / "spool_waiting", sink, weights, series_quiet_seconds=600)
    for path in series:
        waiting.accept(pydicom.dcmread(path))
    assert waiting.process_pending() == 0 and waiting.spool.counts()["incoming"] == 4, "still arriving: kept queued"

    processor = _processor(tmp_path / "spool", sink, weights, series_quiet_seconds=0)
    for path in [*series, study[0]]:
        processor.accept(pydicom.dcmread(path))
    assert processor.process_pending() == 5
    kinds = sorted(ds.SOPClassUID.name for ds in sink.sent)
    assert kinds == ["Parametric Map Storage", "Parametric Map Storage", "Segmentation Storage"]
    (volume_map,) = [
        ds for ds in sink.sent if ds.SOPClassUID.name == "Parametric Map Storage" and ds.NumberOfFrames > 1
    ]
    assert (
        int(volume_map.NumberOfFrames) == 4
        and volume_map.StudyInstanceUID == pydicom.dcmread(series[0]).StudyInstanceUID
    )
    assert processor.spool.counts() == {"incoming": 0, "processing": 0, "done": 5, "failed": 0}
    assert processor.statistics.explained == 5
    assert not list((tmp_path / "spool" / "series").iterdir()), "the series' folder of links is removed"


def test_by_series_a_late_instance_makes_the_series_again_into_the_same_derived_series(weights, tmp_path):
    series = _series_slices(tmp_path / "series", 4)
    sink = Collector()
    processor = _processor(tmp_path / "spool", sink, weights, series_quiet_seconds=0)
    for path in series[:3]:
        processor.accept(pydicom.dcmread(path))
    assert processor.process_pending() == 3
    first = {ds.SOPClassUID.name: ds for ds in sink.sent}
    assert sorted(first) == ["Parametric Map Storage", "Segmentation Storage"]
    assert all(int(ds.NumberOfFrames) == 3 for ds in first.values())

    processor.accept(pydicom.dcmread(series[3]))  # arrives after its series was explained
    assert processor.process_pending() == 1
    later = sink.sent[2:]
    assert sorted(ds.SOPClassUID.name for ds in later) == sorted(first), "the volume again, not a 2D image"
    sources = {pydicom.dcmread(path).SOPInstanceUID for path in series}
    for derived in later:
        earlier = first[derived.SOPClassUID.name]
        assert derived.SeriesInstanceUID == earlier.SeriesInstanceUID, "one derived series per kind"
        assert derived.SOPInstanceUID != earlier.SOPInstanceUID
        referenced = {
            frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for frame in derived.PerFrameFunctionalGroupsSequence
        }
        assert int(derived.NumberOfFrames) == 4 and referenced == sources
    assert processor.statistics.explained == 4 and processor.statistics.failed == 0
    assert processor.spool.counts() == {"incoming": 0, "processing": 0, "done": 4, "failed": 0}
    assert processor.spool.explained_series(pydicom.dcmread(series[0]).SeriesInstanceUID)["version"] == 2


def test_by_series_the_worker_wakes_when_a_waiting_series_becomes_complete(weights, tmp_path):
    series = _series_slices(tmp_path / "series", 2)
    processor = _processor(tmp_path / "spool", Collector(), weights, series_quiet_seconds=3.0)
    node = DicomNode(processor, "MEDXGAN", free_port(), poll_seconds=30.0)
    assert node._sleep_seconds() == 30.0, "nothing waiting: the poll interval"
    for path in series:
        processor.accept(pydicom.dcmread(path))
    assert processor.process_pending() == 0
    newest = max(path.stat().st_mtime for path in (tmp_path / "spool" / "incoming").glob("*.dcm"))
    assert processor.next_series_ready == pytest.approx(newest + 3.0)
    assert 0.0 < node._sleep_seconds() <= 3.0, "woken when the series is complete, not at the next poll"


def test_by_series_a_delivery_cut_off_by_a_crash_is_repeated_with_the_same_objects(weights, tmp_path):
    series = _series_slices(tmp_path / "series", 3)
    results = tmp_path / "spool" / "results"
    sink = Collector()
    sink.down = True
    processor = _processor(tmp_path / "spool", sink, weights, series_quiet_seconds=0)
    for path in series:
        processor.accept(pydicom.dcmread(path))
    assert processor.process_pending() == 3
    assert processor.statistics.delivery_failures == 1 and processor.spool.counts()["incoming"] == 3
    processor.spool.claim()  # the process dies after claiming the series once more
    first = {path.name: path.read_bytes() for path in results.glob("*.dcm")}
    assert len(first) == 2, "one Parametric Map and one Segmentation for the series"

    restarted = _processor(tmp_path / "spool", sink, weights, series_quiet_seconds=0)
    assert restarted.spool.recover() == 3
    explained = []
    run = restarted.pipeline.run
    restarted.pipeline.run = lambda overrides: explained.append(run(overrides)) or explained[-1]
    sink.down = False
    assert restarted.process_pending() == 3
    assert not explained[0].predictions and len(explained[0].completed) == 1, "committed before the crash: not again"
    assert {path.name: path.read_bytes() for path in results.glob("*.dcm")} == first
    assert sorted(ds.SOPInstanceUID for ds in sink.sent) == sorted(
        pydicom.dcmread(results / name).SOPInstanceUID for name in first
    ), "the same objects, which the destination recognises"
    assert restarted.accept(pydicom.dcmread(series[0])) == "already received", "a resend is not explained twice"
    assert restarted.spool.counts() == {"incoming": 0, "processing": 0, "done": 3, "failed": 0}


def test_a_batch_is_delivered_while_the_next_is_explained(study, weights, tmp_path):
    next_batch_explaining = threading.Event()

    class WaitingSink(Collector):
        def send(self, paths) -> None:
            # the first batch's delivery can only finish once the second batch is being explained
            if not next_batch_explaining.wait(60):
                raise DeliveryError("the next batch was not explained during this delivery")
            super().send(paths)

    sink = WaitingSink()
    processor = _processor(tmp_path / "spool", sink, weights, batch_size=1)
    explain = processor.pipeline.run
    runs = []

    def recording_run(overrides):
        runs.append(overrides["input"])
        if len(runs) == 2:
            next_batch_explaining.set()
        return explain(overrides)

    processor.pipeline.run = recording_run
    for path in study[:2]:
        processor.accept(pydicom.dcmread(path))
    assert processor.process_pending() == 2
    assert processor.statistics.explained == 2 and processor.statistics.delivery_failures == 0
    assert len(runs) == 2 and len(sink.sent) == 2


def test_the_node_keeps_one_warm_pipeline_and_explains_with_its_threads(study, weights, tmp_path, monkeypatch):
    import torch

    from medxgan_monai.node.processor import default_torch_threads

    assert default_torch_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    sink = Collector()
    processor = _processor(tmp_path / "spool", sink, weights, batch_size=1, torch_threads=1)
    for path in study[:2]:
        processor.accept(pydicom.dcmread(path))
    assert processor.process_pending() == 2 and processor.statistics.explained == 2
    built = dict(processor.pipeline.built)
    assert set(built) == {"classifier_net", "explainers"}, "the first batch's networks are kept"
    processor.accept(pydicom.dcmread(study[2]))
    processor.process_pending()
    assert all(processor.pipeline.built[name] is built[name] for name in built), "later batches reuse them"
    assert threads == [1, 1, 1], "each batch explains with the node's threads"
    assert [ds.SOPClassUID.name for ds in sink.sent] == ["Parametric Map Storage"] * 3, "no overlay unless asked"
    written = {path.suffix for path in (tmp_path / "spool" / "results").iterdir() if not path.name.startswith(".")}
    assert written == {".dcm", ".csv"}, "the node writes what it delivers (and its predictions), nothing else"
