"""Data: the demo benchmark builder and datalist loading and validation."""

from medxgan_monai.data.demo import DemoDataSettings, build_demo_dataset, image_statistics_auc
from medxgan_monai.data.lesions import LesionSettings

__all__ = ["DemoDataSettings", "LesionSettings", "build_demo_dataset", "image_statistics_auc"]
