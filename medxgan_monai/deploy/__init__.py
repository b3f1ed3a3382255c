"""Deployment: the explainer as an MLflow pyfunc model in the MLflow model registry, and exported networks."""

from medxgan_monai.deploy.export import export_network, load_exported
from medxgan_monai.deploy.pyfunc import ExplainerModel, encode_image_file, register_explainer

__all__ = ["ExplainerModel", "encode_image_file", "export_network", "load_exported", "register_explainer"]
