"""DICOM networking (DIMSE, pynetdicom): the node's C-STORE SCP and the C-STORE SCU that returns the results."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medxgan_monai.node.processor import DeliveryError, ExplanationProcessor

__all__ = ["DicomNode", "DimseSender"]

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


class DimseSender:
    """Send DICOM files to a destination AE with C-STORE (one association per call).

    Example::

        DimseSender("127.0.0.1", 4242, "ORTHANC", calling_ae_title="MEDXGAN").send([Path("sc.dcm")])
    """

    def __init__(self, host: str, port: int, ae_title: str, calling_ae_title: str = "MEDXGAN", timeout: float = 30):
        self.host, self.port, self.ae_title = host, int(port), ae_title
        self.calling_ae_title, self.timeout = calling_ae_title, timeout

    def send(self, paths: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(path) for path in paths]
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
            ae.add_requested_context(sop_class, [syntax])
        association = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not association.is_established:
            raise DeliveryError(f"no association with {self.ae_title}@{self.host}:{self.port}")
        try:
            for path, dataset in zip(paths, datasets, strict=True):
                status = association.send_c_store(dataset)
                code = getattr(status, "Status", None)
                if code != SUCCESS:
                    raise DeliveryError(f"{self.ae_title} answered status {code!r} to C-STORE of {path.name}")
        finally:
            association.release()


class DicomNode:
    """A DICOM node: a C-STORE SCP that queues received instances into an :class:`ExplanationProcessor`, and a
    worker thread that explains the queue and sends the results back.

    Associations from calling AE titles outside ``allowed_calling_ae_titles`` are rejected (any title is accepted
    when it is empty). Instances that do not fit the model are acknowledged, logged and skipped. On start, instances
    left in ``processing`` by an interrupted run are queued again.

    Example::

        node = DicomNode(processor, ae_title="MEDXGAN", port=11112, allowed_calling_ae_titles=["ORTHANC"])
        node.start(); ...; node.stop()
    """

    def __init__(
        self,
        processor: ExplanationProcessor,
        ae_title: str = "MEDXGAN",
        port: int = 11112,
        host: str = "127.0.0.1",
        allowed_calling_ae_titles: Sequence[str] = (),
        poll_seconds: float = 1.0,
    ) -> None:
        self.processor = processor
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.allowed = list(allowed_calling_ae_titles)
        self.poll_seconds = poll_seconds
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._server = None
        self._worker: threading.Thread | None = None

    def _on_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            self.processor.accept(dataset)
        except Exception:  # a bad instance must never take the node down
            logger.exception("could not store a received instance")
            return OUT_OF_RESOURCES
        self._work.set()
        return SUCCESS

    def start(self) -> None:
        """Queue what an interrupted run left, start the worker and listen (non-blocking)."""
        self.processor.spool.recover()
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.allowed:
            ae.require_calling_aet = self.allowed
        self._worker = threading.Thread(target=self._work_loop, name="medxgan-node-worker", daemon=True)
        self._worker.start()
        self._work.set()
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        logger.info("DICOM node %s listening on %s:%d", self.ae_title, self.host, self.port)

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            self._work.wait(self.poll_seconds)
            self._work.clear()
            try:
                self.processor.process_pending()
            except Exception:  # keep serving; the instance stays where the processor left it
                logger.exception("processing the queue failed")

    def stop(self) -> None:
        """Stop listening, finish the batch in progress, and close the processor's tracking."""
        if self._server is not None:
            self._server.shutdown()
        self._stopping.set()
        self._work.set()
        if self._worker is not None:
            self._worker.join()
        self.processor.close()

    def serve_forever(self) -> None:
        """:meth:`start`, then block until interrupted (Ctrl-C), then :meth:`stop`."""
        self.start()
        try:
            self._stopping.wait()
        except KeyboardInterrupt:
            logger.info("stopping")
        finally:
            self.stop()
