"""Deployment: the explainer as an MLflow pyfunc model in the MLflow model registry."""

from medxgan_monai.deploy.pyfunc import ExplainerModel, encode_image_file, register_explainer

__all__ = ["ExplainerModel", "encode_image_file", "register_explainer"]
