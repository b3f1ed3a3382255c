"""The DICOM node over DICOMweb by series: a study (or one of its series) pulled with WADO-RS, each series explained as
one volume, one multi-frame Parametric Map and one SEG per series stored back with STOW-RS, against a real Orthanc."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from test_node import _derived_series, _processor, _series_slices, needs_orthanc

from medxgan_monai.io import SyntheticPatient
from medxgan_monai.node import OrthancServer, StowSender, explain_study

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def two_series(tmp_path) -> tuple[list[Path], list[Path]]:
    """A study of two series: four slices, and one slice."""
    volume = SyntheticPatient("WEB-SERIES-TEST", "WEB^SERIES")
    single = dataclasses.replace(volume, series_instance_uid=generate_uid())
    return _series_slices(tmp_path / "volume", 4, volume), _series_slices(tmp_path / "single", 1, single)


def _stored_results(client, orthanc: OrthancServer, study_uid: str) -> list[pydicom.Dataset]:
    """Every derived object Orthanc holds in the study, read back over WADO-RS."""
    results = []
    for entry in _derived_series(orthanc, study_uid):
        results += client.retrieve_series(study_uid, entry["MainDicomTags"]["SeriesInstanceUID"])
    return results


def _referenced_instances(result: pydicom.Dataset) -> set[str]:
    """The source instances each frame of a Parametric Map or SEG was derived from."""
    return {
        source.ReferencedSOPInstanceUID
        for frame in result.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }


def _uids(paths: list[Path]) -> tuple[str, str, set[str]]:
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    return headers[0].StudyInstanceUID, headers[0].SeriesInstanceUID, {ds.SOPInstanceUID for ds in headers}


@needs_orthanc
def test_a_study_pulled_by_series_gets_one_map_and_one_segmentation_per_series(two_series, weights, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    volume, single = two_series
    study_uid, volume_series, volume_instances = _uids(volume)
    _, _, single_instances = _uids(single)
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        for path in volume + single:
            orthanc.upload(path)
        client = DICOMwebClient(f"{orthanc.url}/dicom-web")
        processor = _processor(tmp_path / "spool", StowSender(client), weights, series_quiet_seconds=0)
        statistics = explain_study(client, study_uid, processor)
        results = _stored_results(client, orthanc, study_uid)
    assert statistics.explained == 5 and statistics.failed == 0 and statistics.delivery_failures == 0
    assert processor.spool.counts() == {"incoming": 0, "processing": 0, "done": 5, "failed": 0}
    assert sorted((ds.SOPClassUID, int(ds.NumberOfFrames)) for ds in results) == sorted(
        [(PARAMETRIC_MAP, 4), (SEGMENTATION, 4), (PARAMETRIC_MAP, 1)]
    ), "one map and one SEG for the four slices, one map for the single slice: not one map per slice"
    frame_of_reference = pydicom.dcmread(volume[0]).FrameOfReferenceUID
    for result in results:
        assert result.StudyInstanceUID == study_uid
        if int(result.NumberOfFrames) == 4:
            assert _referenced_instances(result) == volume_instances, "each frame references its own source slice"
            assert result.FrameOfReferenceUID == frame_of_reference
            assert result.ReferencedSeriesSequence[0].SeriesInstanceUID == volume_series
        else:
            assert result.SOPClassUID == PARAMETRIC_MAP and _referenced_instances(result) == single_instances


@needs_orthanc
def test_one_series_pulled_alone_is_the_only_one_explained(two_series, weights, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    volume, single = two_series
    study_uid, volume_series, volume_instances = _uids(volume)
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        for path in volume + single:
            orthanc.upload(path)
        client = DICOMwebClient(f"{orthanc.url}/dicom-web")
        processor = _processor(tmp_path / "spool", StowSender(client), weights, series_quiet_seconds=0)
        statistics = explain_study(client, study_uid, processor, series_instance_uid=volume_series)
        results = _stored_results(client, orthanc, study_uid)
    assert statistics.received == 4 and statistics.explained == 4 and statistics.failed == 0
    assert sorted(ds.SOPClassUID for ds in results) == [PARAMETRIC_MAP, SEGMENTATION]
    for result in results:
        assert int(result.NumberOfFrames) == 4 and _referenced_instances(result) == volume_instances


def test_explain_study_refuses_a_series_uid_that_is_not_a_uid_before_any_request(tmp_path):
    class Unreachable:
        def retrieve_study(self, *args):
            raise AssertionError("no request may be sent")

        retrieve_series = retrieve_study

    with pytest.raises(ValueError, match="Series Instance UID") as refused:
        explain_study(Unreachable(), "1.2.3", processor=None, series_instance_uid="1.2.3/../../studies")
    assert "studies" not in str(refused.value), "the bad value is not quoted"


def test_command_line_refuses_a_series_that_is_not_a_uid_without_quoting_it(tmp_path, capsys):
    from medxgan_monai.cli.node import main

    arguments = ["dicomweb", "--url", "http://127.0.0.1:1/dicom-web", "--study", "1.2.3", "--spool", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_status:
        main([*arguments, "--series", "not-a-uid"])
    error = capsys.readouterr().err
    assert exit_status.value.code == 2 and "--series must be a valid Series Instance UID" in error
    assert "not-a-uid" not in error


@pytest.mark.parametrize(
    ("options", "quiet"), [([], None), (["--by-series"], 0.0), (["--by-series", "--series-quiet", "5"], 5.0)]
)
def test_command_line_by_series_explains_without_waiting_and_records_its_settings(
    options, quiet, tmp_path, monkeypatch
):
    import medxgan_monai.node as node
    from medxgan_monai.cli.node import main
    from medxgan_monai.node.processor import NodeStatistics

    built, pulled = {}, {}

    class RecordingProcessor:
        def __init__(self, *args, **settings) -> None:
            built.update(settings)

        def close(self) -> None:
            pass

    def recording_explain_study(client, study_uid, processor, series_instance_uid=None):
        pulled.update(url=client.base_url, study=study_uid, series=series_instance_uid)
        return NodeStatistics(explained=1)

    monkeypatch.setattr(node, "ExplanationProcessor", RecordingProcessor)
    monkeypatch.setattr(node, "explain_study", recording_explain_study)
    arguments = ["dicomweb", "--url", "http://127.0.0.1:1/dicom-web", "--study", "1.2.3", "--spool", str(tmp_path)]
    assert main([*arguments, "--series", "1.2.3.4", *options]) == 0
    assert pulled == {"url": "http://127.0.0.1:1/dicom-web", "study": "1.2.3", "series": "1.2.3.4"}
    assert built["series_quiet_seconds"] == quiet
    assert built["parameters"]["series"] == "1.2.3.4" and built["parameters"]["by_series"] == bool(options)
    assert built["parameters"]["series_quiet"] == quiet
