"""DICOMweb: pull a study (WADO-RS), explain it, store the results back (STOW-RS), with dicomweb-client."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

from medxgan_monai.node.processor import DeliveryError, ExplanationProcessor, NodeStatistics
from medxgan_monai.node.spool import InvalidUIDError, is_valid_uid

__all__ = ["StowSender", "explain_study"]

logger = logging.getLogger(__name__)


class StowSender:
    """Store DICOM files on a DICOMweb server with STOW-RS.

    Example::

        StowSender(DICOMwebClient("http://127.0.0.1:8042/dicom-web")).send([Path("sc.dcm")])
    """

    def __init__(self, client: DICOMwebClient) -> None:
        self.client = client

    def send(self, paths: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(path) for path in paths]
        try:
            response = self.client.store_instances(datasets)
        except Exception as error:
            raise DeliveryError(f"STOW-RS to {self.client.base_url} failed: {error}") from error
        failed = response.get("FailedSOPSequence", []) if response is not None else []
        if failed:
            raise DeliveryError(f"STOW-RS to {self.client.base_url} refused {len(failed)} instance(s)")


def explain_study(
    client: DICOMwebClient,
    study_instance_uid: str,
    processor: ExplanationProcessor,
    series_instance_uid: str | None = None,
) -> NodeStatistics:
    """Retrieve every instance of a study (or of one of its series) with WADO-RS, explain those that fit, and deliver
    the results through the processor's sink (a :class:`StowSender` stores them back in the same study).

    A study or series retrieved at once holds each of its series complete, so a processor that explains by series
    should not wait for more instances: give it ``series_quiet_seconds=0``, and each series comes back as one
    multi-frame Parametric Map and one Segmentation (a series of one instance as that image's Parametric Map). With a
    longer quiet time, a series whose ImagesInAcquisition are not all there stays in the spool's queue, unexplained,
    until a later :meth:`ExplanationProcessor.process_pending` call.

    Args:
        client: the DICOMweb server the instances come from.
        study_instance_uid: the study to retrieve.
        processor: spools, explains and delivers the instances.
        series_instance_uid: retrieve only this series of the study (default: every series of the study).

    Returns:
        The processor's statistics after the retrieved instances were handled.

    Raises:
        ValueError: ``study_instance_uid`` or ``series_instance_uid`` is not a valid UID (each becomes part of the
            request's URL path).

    Example::

        client = DICOMwebClient("http://127.0.0.1:8042/dicom-web")
        processor = ExplanationProcessor(Spool("spool/"), StowSender(client), series_quiet_seconds=0)
        explain_study(client, "1.2.3...", processor)  # each series as one volume
        explain_study(client, "1.2.3...", processor, series_instance_uid="1.2.3.4...")  # one series only
    """
    if not is_valid_uid(study_instance_uid):
        raise ValueError("the Study Instance UID is not a valid DICOM UID (digits and dots, at most 64 characters)")
    if series_instance_uid is None:
        instances = client.retrieve_study(study_instance_uid)
        retrieved = f"study {study_instance_uid}"
    else:
        if not is_valid_uid(series_instance_uid):
            raise ValueError(
                "the Series Instance UID is not a valid DICOM UID (digits and dots, at most 64 characters)"
            )
        instances = client.retrieve_series(study_instance_uid, series_instance_uid)
        retrieved = f"series {series_instance_uid} of study {study_instance_uid}"
    logger.info("retrieved %d instance(s) of %s", len(instances), retrieved)
    for index, dataset in enumerate(instances):
        try:
            processor.accept(dataset)
        except InvalidUIDError as error:  # one bad instance of the study must not stop the others
            logger.warning("skipping instance %d of %s: %s", index + 1, retrieved, error)
        except OSError:  # the node's own disk: nothing more can be stored
            raise
        except Exception as error:  # a malformed instance (a value the fit check cannot read), as a C-STORE refuses
            # the error's type only: its text may quote a received value, a patient attribute among them
            reason = type(error).__name__
            logger.warning("skipping instance %d of %s: cannot be checked (%s)", index + 1, retrieved, reason)
    processor.process_pending()
    return processor.statistics
