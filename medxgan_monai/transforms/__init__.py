"""Transforms: scan loading with clear errors, on top of MONAI's readers."""

from medxgan_monai.transforms.io import (
    DicomSliceReader,
    ImageReadError,
    LoadScan,
    LoadScand,
    detect_format,
    load_scan,
)

__all__ = ["DicomSliceReader", "ImageReadError", "LoadScan", "LoadScand", "detect_format", "load_scan"]
