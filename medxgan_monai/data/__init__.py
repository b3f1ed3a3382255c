"""Data: the demo benchmark builder and datalist loading and validation."""

from medxgan_monai.data.batching import GrowingBatchSampler
from medxgan_monai.data.datalist import DatalistError, load_datalist, validate_datalist
from medxgan_monai.data.demo import DemoDataSettings, build_demo_dataset, image_statistics_auc
from medxgan_monai.data.inputs import (
    InputProblem,
    collect_evaluation_items,
    collect_inputs,
    output_stem,
    screen_inputs,
)
from medxgan_monai.data.lesions import LesionSettings

__all__ = [
    "DatalistError",
    "DemoDataSettings",
    "GrowingBatchSampler",
    "InputProblem",
    "LesionSettings",
    "build_demo_dataset",
    "collect_evaluation_items",
    "collect_inputs",
    "image_statistics_auc",
    "load_datalist",
    "output_stem",
    "screen_inputs",
    "validate_datalist",
]
