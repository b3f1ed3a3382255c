"""Writers that store images and results next to the source study (DICOM and NIfTI, always atomically), network
weights as plain state dicts, and DICOM series folders read as volumes (headers, order and geometry)."""

from medxgan_monai.io.atomic import (
    OutputNotWritable,
    atomic_output,
    atomic_replace_dir,
    atomic_write_csv,
    atomic_write_text,
    ensure_writable_dir,
)
from medxgan_monai.io.charts import ExampleCase, write_example_cases, write_metric_bars, write_randomization_curves
from medxgan_monai.io.dicom import MRSliceGeometry, SyntheticPatient, write_mr_slice
from medxgan_monai.io.dicom_derived import (
    write_overlay_secondary_capture,
    write_saliency_parametric_map,
    write_series_parametric_map,
    write_series_segmentation,
)
from medxgan_monai.io.figures import saliency_overlay, write_panel, write_sweep_gif
from medxgan_monai.io.ledger import OutputLedger
from medxgan_monai.io.nifti import write_nifti
from medxgan_monai.io.series import (
    DicomSeries,
    SeriesError,
    group_dicom_series,
    read_dicom_multiframe,
    read_dicom_series,
)
from medxgan_monai.io.weights import load_weights, save_state_dict

__all__ = [
    "OutputNotWritable",
    "ensure_writable_dir",
    "OutputLedger",
    "ExampleCase",
    "write_example_cases",
    "write_metric_bars",
    "write_randomization_curves",
    "MRSliceGeometry",
    "SyntheticPatient",
    "atomic_output",
    "atomic_replace_dir",
    "atomic_write_csv",
    "atomic_write_text",
    "load_weights",
    "save_state_dict",
    "write_mr_slice",
    "DicomSeries",
    "SeriesError",
    "group_dicom_series",
    "read_dicom_multiframe",
    "read_dicom_series",
    "saliency_overlay",
    "write_nifti",
    "write_overlay_secondary_capture",
    "write_panel",
    "write_saliency_parametric_map",
    "write_series_parametric_map",
    "write_series_segmentation",
    "write_sweep_gif",
]
