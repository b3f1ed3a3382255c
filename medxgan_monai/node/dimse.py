"""DICOM networking (DIMSE, pynetdicom): the node's C-STORE SCP and the C-STORE SCU that returns the results.

Network limits (defaults below, all configurable): a peer must send its association request within ``acse_timeout``
seconds of connecting, an established association silent for ``network_timeout`` seconds is aborted, a DIMSE answer is
awaited at most ``dimse_timeout`` seconds, and at most ``maximum_associations`` connections are served at once (further
association requests are rejected as transient, "local limit exceeded"). TLS is optional (:func:`server_tls_context`,
:func:`client_tls_context`); AE titles are not authentication.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medxgan_monai.node.processor import DeliveryError, ExplanationProcessor
from medxgan_monai.node.spool import InvalidUIDError

__all__ = [
    "ACSE_TIMEOUT",
    "DIMSE_TIMEOUT",
    "MAXIMUM_ASSOCIATIONS",
    "NETWORK_TIMEOUT",
    "DicomNode",
    "DimseSender",
    "client_tls_context",
    "is_loopback",
    "server_tls_context",
]

logger = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3 and the general statuses of PS3.7 C)
SUCCESS = 0x0000
#: PS3.7 C "Invalid SOP Instance": the SOP Instance UID violates the UID construction rules. A failure, not a refusal
#: for lack of resources: resending the same object cannot succeed, so the sender is not invited to retry.
INVALID_SOP_INSTANCE = 0x0117
#: PS3.4 B.2.3 "Error: Data Set does not match SOP Class": the data set's SOP Class or Instance UID differs from the
#: C-STORE request's Affected SOP Class / Instance UID.
DATASET_DOES_NOT_MATCH = 0xA900
#: PS3.4 B.2.3 "Error: Cannot understand": the data set cannot be decoded or checked.
CANNOT_UNDERSTAND = 0xC000
#: PS3.4 B.2.3 "Refused: Out of resources": only when the node itself cannot store (disk full, spool unwritable),
#: where a later retry may succeed.
OUT_OF_RESOURCES = 0xA700

#: seconds a peer has to send its association request after connecting (and to answer a release); a PACS sends it at
#: once, so a short limit frees the slots of connections that never start an association
ACSE_TIMEOUT = 10.0
#: seconds an established association may stay silent (and a single read may stall) before it is aborted
NETWORK_TIMEOUT = 30.0
#: seconds to wait for a DIMSE message (the destination's answer to a C-STORE)
DIMSE_TIMEOUT = 30.0
#: connections served at once (pynetdicom's default is 10; idle ones count until ``ACSE_TIMEOUT`` closes them)
MAXIMUM_ASSOCIATIONS = 32


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (``0.0.0.0``, ``::`` and ``""`` mean every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls_context(cert: str | Path, key: str | Path, ca: str | Path | None = None) -> ssl.SSLContext:
    """TLS for the node's SCP: its certificate and key; with ``ca``, callers must present a certificate signed by it
    (mutual TLS, which authenticates them; AE titles do not). TLS 1.2 or later."""
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(ca)
    return context


def client_tls_context(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext:
    """TLS for the C-STORE SCU: the destination's certificate is verified against ``ca`` (the system's trusted CAs
    when ``None``) and must name the host connected to; ``cert``/``key`` are presented when the destination asks
    for a client certificate. TLS 1.2 or later."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


class _DeferredHandshakeContext(ssl.SSLContext):
    """pynetdicom wraps each accepted socket in its single accept loop; with the handshake deferred to the
    connection's own thread (it happens on the first read, under that socket's timeout), a peer that connects and
    never completes a handshake cannot stall every other connection."""

    def wrap_socket(self, sock, *args, **kwargs):
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


class DimseSender:
    """Send DICOM files to a destination AE with C-STORE (one association per call), over TLS when given an
    ``ssl_context`` (see :func:`client_tls_context`).

    Example::

        DimseSender("127.0.0.1", 4242, "ORTHANC", calling_ae_title="MEDXGAN").send([Path("sc.dcm")])
    """

    def __init__(
        self,
        host: str,
        port: int,
        ae_title: str,
        calling_ae_title: str = "MEDXGAN",
        timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.host, self.port, self.ae_title = host, int(port), ae_title
        self.calling_ae_title, self.timeout = calling_ae_title, timeout
        self.ssl_context = ssl_context

    def send(self, paths: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(path) for path in paths]
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
            ae.add_requested_context(sop_class, [syntax])
        tls = (self.ssl_context, self.host) if self.ssl_context is not None else None
        association = ae.associate(self.host, self.port, ae_title=self.ae_title, tls_args=tls)
        if not association.is_established:
            raise DeliveryError(f"no association with {self.ae_title}@{self.host}:{self.port}")
        # pynetdicom leaves Nagle's algorithm on: each C-STORE's last small PDU then waited for the peer's delayed
        # ACK, ~90 ms per object to Orthanc on loopback, ~50 ms without it (scripts/benchmark_node.py)
        association.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    when it is empty, which is allowed on a loopback address only, unless ``allow_any_calling_ae``). Instances that do
    not fit the model are acknowledged, logged and skipped; instances that cannot be stored are answered with a failure
    status that does not invite a retry (invalid SOP Instance UID: 0x0117; data set not matching the request: 0xA900;
    undecodable: 0xC000); 0xA700 (out of resources) only when the node cannot write. On start, instances left in
    ``processing`` by an interrupted run are queued again.

    Args:
        processor: explains and delivers what is received.
        ae_title, port, host: the SCP's AE title and address (default loopback only).
        allowed_calling_ae_titles: calling AE titles accepted (empty: any).
        poll_seconds: how often the worker looks at the queue when nothing wakes it.
        ssl_context: TLS for the SCP (:func:`server_tls_context`); ``None``: plain TCP.
        allow_any_calling_ae: listen on a non-loopback address with an empty allow list anyway.
        acse_timeout, network_timeout, dimse_timeout, maximum_associations: see the module's documentation.

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
        ssl_context: ssl.SSLContext | None = None,
        allow_any_calling_ae: bool = False,
        acse_timeout: float = ACSE_TIMEOUT,
        network_timeout: float = NETWORK_TIMEOUT,
        dimse_timeout: float = DIMSE_TIMEOUT,
        maximum_associations: int = MAXIMUM_ASSOCIATIONS,
    ) -> None:
        self.processor = processor
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.allowed = list(allowed_calling_ae_titles)
        if not self.allowed and not is_loopback(host) and not allow_any_calling_ae:
            raise ValueError(
                f"refusing to listen on {host or 'every interface'} with no allowed calling AE titles: anyone who can"
                " reach the port could send instances; name the senders (--allow) or pass --allow-any-calling-ae"
            )
        self.poll_seconds = poll_seconds
        self.ssl_context = ssl_context
        self.acse_timeout, self.network_timeout, self.dimse_timeout = acse_timeout, network_timeout, dimse_timeout
        self.maximum_associations = int(maximum_associations)
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._server = None
        self._worker: threading.Thread | None = None

    def _on_connect(self, event) -> None:
        # pynetdicom reads a PDU with blocking calls once data arrives; a timeout on the connection's socket means a
        # peer that stalls mid-PDU (or mid TLS handshake) is aborted instead of holding its slot for ever
        event.assoc.dul.socket.socket.settimeout(self.network_timeout)

    def _on_store(self, event) -> int:
        caller = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            received = (dataset.get("SOPClassUID"), dataset.get("SOPInstanceUID"))
        except Exception:  # whatever the decoder raises, the data set cannot be understood
            logger.warning("refused a C-STORE from %s: the data set cannot be decoded", caller)
            return CANNOT_UNDERSTAND
        requested = (event.request.AffectedSOPClassUID, event.request.AffectedSOPInstanceUID)
        if tuple(map(str, received)) != tuple(map(str, requested)):
            logger.warning(
                "refused a C-STORE from %s: the data set's SOP Class/Instance UID differ from the request's", caller
            )
            return DATASET_DOES_NOT_MATCH
        try:
            self.processor.accept(dataset)
        except InvalidUIDError as error:
            logger.warning("refused a C-STORE from %s: %s", caller, error)
            return INVALID_SOP_INSTANCE
        except OSError:  # the node's own disk: a later retry may succeed
            logger.exception("could not store a received instance")
            return OUT_OF_RESOURCES
        except Exception as error:  # a malformed instance must never take the node down, nor be retried
            # the error's type only: its text may quote a received value, a patient attribute among them
            logger.warning(
                "refused a C-STORE from %s: the instance could not be checked (%s)", caller, type(error).__name__
            )
            return CANNOT_UNDERSTAND
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
        ae.acse_timeout, ae.network_timeout = self.acse_timeout, self.network_timeout
        ae.dimse_timeout, ae.maximum_associations = self.dimse_timeout, self.maximum_associations
        self._worker = threading.Thread(target=self._work_loop, name="medxgan-node-worker", daemon=True)
        self._worker.start()
        self._work.set()
        handlers = [(evt.EVT_CONN_OPEN, self._on_connect), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        self.port = self._server.server_address[1]  # the port chosen by the system when asked for port 0
        logger.info(
            "DICOM node %s listening on %s:%d (%s)",
            self.ae_title,
            self.host,
            self.port,
            "TLS" if self.ssl_context is not None else "plain TCP, no TLS",
        )

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            self._work.wait(self._sleep_seconds())
            self._work.clear()
            try:
                self.processor.process_pending()
            except Exception:  # keep serving; the instance stays where the processor left it
                logger.exception("processing the queue failed")

    def _sleep_seconds(self) -> float:
        """Until the next poll, or until a series still arriving becomes complete by its quiet time, if sooner (by
        series, a whole poll interval would add up to ``poll_seconds`` to every series' latency)."""
        ready = self.processor.next_series_ready
        if ready is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, ready - time.time()))

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
