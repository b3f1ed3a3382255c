"""The explainer as an MLflow pyfunc model, and its registration in the MLflow model registry.

The model packs the bundle's inference config and weights (classifier, generator, encoder) as artifacts; its input
is a table of image files encoded in base64 (DICOM, NIfTI or PNG: one scan per row), its output per row the positive
probability, the counterfactuals' probabilities (G(z_a, 0) and the residual one) and each method's saliency map on
the model's grid (nested lists in [0, 1]), or the reason the row could not be explained. It runs the same
preprocessing and explainers as ``inference.json``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from medxgan_monai.bundle import DEFAULT_BUNDLE, config_values

__all__ = ["ExplainerModel", "encode_image_file", "register_explainer"]

SETTINGS = "settings.json"
BUNDLE_FILES = ("configs/inference.json", "configs/metadata.json")
#: weight overrides -> the file each is packed as, under the packed bundle's models/
PACKED_WEIGHTS = {
    "classifier_ckpt": "classifier.pt",
    "generator_ckpt": "generator.pt",
    "encoder_ckpt": "encoder.pt",
    "counterfactual_encoder_ckpt": "counterfactual_encoder.pt",
}
#: packed weights a model may lack (its inference config then runs without them: ``None``)
OPTIONAL_WEIGHTS = ("counterfactual_encoder_ckpt",)
#: overrides that are config definitions (built by MONAI), not values: the classifier as it was trained
CONFIG_DEFINITIONS = ("network_def",)


def _configure(parser, bundle: Path, overrides: dict) -> None:
    """Apply ``overrides`` to an inference-config ``parser`` of ``bundle``: values as data (a path or name is never
    evaluated, see :func:`~medxgan_monai.bundle.config_value`), network definitions as config."""
    values = {key: value for key, value in overrides.items() if key not in CONFIG_DEFINITIONS}
    parser.update(config_values({"bundle_root": str(bundle), **values}))
    parser.update({key: overrides[key] for key in CONFIG_DEFINITIONS if key in overrides})


def encode_image_file(path: str | os.PathLike) -> dict:
    """One input row for the model: ``{"name": file name, "image_base64": the file's bytes in base64}``."""
    path = Path(path)
    return {"name": path.name, "image_base64": base64.b64encode(path.read_bytes()).decode("ascii")}


class ExplainerModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper of the inference bundle's preprocessing, classifier and explainers.

    Example::

        model = mlflow.pyfunc.load_model("models:/medxgan-explainer/1")
        result = model.predict(pd.DataFrame([encode_image_file("scan.dcm")]))
        result.loc[0, "probability"], np.asarray(result.loc[0, "medxgan"])     # (H, W) saliency map
    """

    def load_context(self, context) -> None:
        from monai.bundle import ConfigParser

        bundle = Path(context.artifacts["bundle"])
        settings = json.loads((bundle / SETTINGS).read_text())
        # the packed weights are named here, in Python (settings of older packed models name them by an expression)
        weights = {key: str(bundle / "models" / packed_file) for key, packed_file in PACKED_WEIGHTS.items()}
        for key in OPTIONAL_WEIGHTS:
            weights[key] = weights[key] if Path(weights[key]).is_file() else None
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        _configure(parser, bundle, {**settings["overrides"], **weights})
        parser["device"] = "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.classifier = parser.get_parsed_content("classifier_net")
        self.device = parser.get_parsed_content("device")
        self.explainers = parser.get_parsed_content("explainers")
        self.methods = self.explainers.methods

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return pd.DataFrame([self._explain_row(row) for row in model_input.to_dict(orient="records")])

    def _explain_row(self, row: dict) -> dict:
        import torch

        from medxgan_monai.explain import counterfactual_names, counterfactuals_by_name
        from medxgan_monai.networks.classifier import class_probabilities

        name = str(row.get("name") or "image")
        nan = float("nan")
        result = {"name": name, "probability": nan, "error": ""}
        result.update({f"{counterfactual}_probability": nan for counterfactual in counterfactual_names()})
        result.update({method: [] for method in self.methods})
        with tempfile.TemporaryDirectory(prefix="medxgan_pyfunc_") as folder:
            path = Path(folder) / Path(name).name
            try:
                path.write_bytes(base64.b64decode(row["image_base64"], validate=True))
                image = self.preprocessing({"image": str(path)})["image"].as_tensor()[None].to(self.device)
                with torch.no_grad():
                    result["probability"] = float(class_probabilities(self.classifier(image))[0, 1])
                attributions, _ = self.explainers.explain(image)
            except Exception as error:  # one bad row must not fail the request
                result["error"] = f"{name}: {type(error).__name__}: {error}"
                return result
        for counterfactual, attribution in counterfactuals_by_name(attributions).items():
            result[f"{counterfactual}_probability"] = float(attribution.counterfactual_probability[0])
        for method, attribution in attributions.items():
            result[method] = np.round(attribution.maps[0, 0].detach().cpu().numpy().T, 4).tolist()
        return result


def _example_png() -> bytes:
    from PIL import Image

    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij"))
    disc = (np.sqrt((grid**2).sum(0)) < 0.8).astype(np.uint8) * 200
    buffer = io.BytesIO()
    Image.fromarray(disc).save(buffer, format="PNG")
    return buffer.getvalue()


def register_explainer(
    name: str,
    tracking_uri: str,
    bundle_root: str | os.PathLike = DEFAULT_BUNDLE,
    methods: Sequence[str] | None = None,
    overrides: dict | None = None,
    network_config: str | os.PathLike | None = None,
    experiment_name: str = "medxgan_registry",
):
    """Log the explainer as a pyfunc model (signature and input example included) and register it as a new version
    of ``name`` in the registry at ``tracking_uri`` (e.g. ``sqlite:///registry.db``); returns the model version.

    Args:
        bundle_root: the bundle whose ``inference.json`` and weights are packed.
        methods: the methods the model runs; default: the packed ``inference.json``'s ``methods`` (every method,
            the default map ``medxgan_ig`` first).
        overrides: inference-config overrides (weights paths, image size, network settings, inversion steps, ...),
            taken as data (paths and names are never evaluated); weight files named here are packed into the model.
        network_config: a config file (e.g. a training run's executed config) whose ``network_def`` replaces the
            inference config's classifier definition, its references resolved (the classifier as it was trained).

    Example::

        version = register_explainer("medxgan-explainer", "sqlite:///outputs/registry/mlruns.db")
        mlflow.pyfunc.load_model(f"models:/medxgan-explainer/{version.version}")
    """
    from monai.bundle import ConfigParser

    overrides = dict(overrides or {})
    if methods is not None:
        overrides["methods"] = list(methods)
    if network_config is not None:
        trained = ConfigParser()
        trained.read_config(str(network_config))
        network = trained.get_parsed_content("network_def", instantiate=False)  # references resolved, not built
        overrides["network_def"] = dict(network.get_config())
    with tempfile.TemporaryDirectory(prefix="medxgan_register_") as staging:
        packed = Path(staging) / "bundle"
        for relative in BUNDLE_FILES:
            (packed / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(bundle_root) / relative, packed / relative)
        parser = ConfigParser()
        parser.read_config(str(Path(bundle_root) / "configs" / "inference.json"))
        _configure(parser, Path(bundle_root), overrides)
        (packed / "models").mkdir()
        for key, packed_file in PACKED_WEIGHTS.items():
            source = parser.get_parsed_content(key)
            if source is not None or key not in OPTIONAL_WEIGHTS:
                shutil.copy(Path(source), packed / "models" / packed_file)
            overrides.pop(key, None)  # the loaded model names its packed copy
        overrides.pop("device", None)
        (packed / SETTINGS).write_text(json.dumps({"overrides": overrides}, indent=1))

        example = pd.DataFrame(
            [{"name": "example.png", "image_base64": base64.b64encode(_example_png()).decode("ascii")}]
        )
        model = ExplainerModel()
        model.load_context(type("Context", (), {"artifacts": {"bundle": str(packed)}})())
        signature = mlflow.models.infer_signature(example, model.predict(None, example))

        # saved locally, then logged and registered through a client: no global MLflow state is touched
        saved = Path(staging) / "explainer"
        mlflow.pyfunc.save_model(
            path=str(saved),
            python_model=ExplainerModel(),
            artifacts={"bundle": str(packed)},
            signature=signature,
            input_example=example,
            pip_requirements=["medxgan-monai"],
        )
        client = mlflow.tracking.MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        run = client.create_run(experiment_id, run_name=f"register_{name}")
        client.log_param(run.info.run_id, "methods", ",".join(model.methods))
        client.log_param(run.info.run_id, "bundle_root", str(bundle_root))
        client.log_artifacts(run.info.run_id, str(saved), "explainer")
        client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    return client.create_model_version(name, f"{run.info.artifact_uri}/explainer", run_id=run.info.run_id)
