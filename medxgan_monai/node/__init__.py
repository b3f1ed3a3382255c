"""The DICOM node: receive instances from a PACS (C-STORE) or pull them (DICOMweb), explain them with the inference
bundle, and send the explanations back into the source study."""

from medxgan_monai.node.dicomweb import StowSender, explain_study
from medxgan_monai.node.dimse import DicomNode, DimseSender, client_tls_context, server_tls_context
from medxgan_monai.node.orthanc import OrthancServer
from medxgan_monai.node.processor import DeliveryError, ExplanationProcessor, NodeStatistics, ResultSink
from medxgan_monai.node.spool import InvalidUIDError, Spool, instance_problem, is_valid_uid

__all__ = [
    "DeliveryError",
    "DicomNode",
    "DimseSender",
    "InvalidUIDError",
    "ExplanationProcessor",
    "NodeStatistics",
    "OrthancServer",
    "ResultSink",
    "Spool",
    "StowSender",
    "client_tls_context",
    "explain_study",
    "instance_problem",
    "is_valid_uid",
    "server_tls_context",
]
