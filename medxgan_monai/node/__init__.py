"""The DICOM node: receive instances from a PACS (C-STORE) or pull them (DICOMweb), explain them with the inference
bundle, and send the explanations back into the source study."""

from medxgan_monai.node.dicomweb import StowSender, explain_study
from medxgan_monai.node.dimse import DicomNode, DimseSender
from medxgan_monai.node.orthanc import OrthancServer
from medxgan_monai.node.processor import DeliveryError, ExplanationProcessor, NodeStatistics, ResultSink
from medxgan_monai.node.spool import Spool, instance_problem

__all__ = [
    "DeliveryError",
    "DicomNode",
    "DimseSender",
    "ExplanationProcessor",
    "NodeStatistics",
    "OrthancServer",
    "ResultSink",
    "Spool",
    "StowSender",
    "explain_study",
    "instance_problem",
]
