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


def explain_study(client: DICOMwebClient, study_instance_uid: str, processor: ExplanationProcessor) -> NodeStatistics:
    """Retrieve every instance of a study with WADO-RS, explain those that fit, and deliver the results through
    the processor's sink (a :class:`StowSender` stores them back in the same study).

    Example::

        client = DICOMwebClient("http://127.0.0.1:8042/dicom-web")
        processor = ExplanationProcessor(Spool("spool/"), StowSender(client))
        explain_study(client, "1.2.3...", processor)

    Raises:
        ValueError: ``study_instance_uid`` is not a valid UID (it becomes part of the request's URL path).
    """
    if not is_valid_uid(study_instance_uid):
        raise ValueError("the Study Instance UID is not a valid DICOM UID (digits and dots, at most 64 characters)")
    instances = client.retrieve_study(study_instance_uid)
    logger.info("retrieved %d instance(s) of study %s", len(instances), study_instance_uid)
    for index, dataset in enumerate(instances):
        try:
            processor.accept(dataset)
        except InvalidUIDError as error:  # one bad instance of the study must not stop the others
            logger.warning("skipping instance %d of study %s: %s", index + 1, study_instance_uid, error)
    processor.process_pending()
    return processor.statistics
