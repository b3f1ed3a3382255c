"""Data: the builders of the demo benchmark, chest radiograph benchmark, demo volumes and native-3D benchmark, and
datalist loading and validation."""

from medxgan_monai.data.batching import GrowingBatchSampler
from medxgan_monai.data.datalist import DatalistError, load_datalist, validate_datalist
from medxgan_monai.data.demo import DemoDataSettings, build_demo_dataset, image_statistics_auc
from medxgan_monai.data.demo_volumes import BENCHMARK_3D, DemoVolumeSettings, build_demo_volumes, render_volume
from medxgan_monai.data.inputs import (
    InputProblem,
    collect_evaluation_items,
    collect_inputs,
    output_stem,
    screen_inputs,
)
from medxgan_monai.data.lesions import LesionSettings
from medxgan_monai.data.radiograph_demo import (
    CHEST_NODULES,
    RadiographDataSettings,
    build_radiograph_dataset,
    render_radiograph_sample,
)

__all__ = [
    "BENCHMARK_3D",
    "CHEST_NODULES",
    "DatalistError",
    "DemoDataSettings",
    "DemoVolumeSettings",
    "GrowingBatchSampler",
    "InputProblem",
    "LesionSettings",
    "RadiographDataSettings",
    "build_demo_dataset",
    "build_demo_volumes",
    "build_radiograph_dataset",
    "collect_evaluation_items",
    "collect_inputs",
    "image_statistics_auc",
    "load_datalist",
    "output_stem",
    "render_radiograph_sample",
    "render_volume",
    "screen_inputs",
    "validate_datalist",
]
