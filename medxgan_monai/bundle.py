"""Helpers that bundle configs call (tracking URI, run names, the executed-config record), and the way user values
enter a config as data (:func:`config_value`), used by every bundle run this package starts."""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import path_to_sqlite_uri

from medxgan_monai.io.atomic import atomic_write_text
from medxgan_monai.io.weights import load_weights, save_state_dict  # the configs call them here

__all__ = [
    "DEFAULT_BUNDLE",
    "default_bundle_root",
    "config_value",
    "config_values",
    "default_tracking_uri",
    "export_executed_config",
    "inference_config",
    "given_value",
    "latest_checkpoint",
    "load_weights",
    "persistent_run_name",
    "reopen_mlflow_run",
    "run_inference",
    "run_name",
    "save_state_dict",
    "shipped_companion",
    "unwrap_config_error",
    "write_report",
]

logger = logging.getLogger(__name__)


def given_value(given: tuple) -> Any:
    """The value that :func:`config_value` wrapped, unchanged (the component its config entries instantiate)."""
    (value,) = given
    return value


def config_value(value: Any) -> dict:
    """``value`` as a config entry that MONAI resolves to ``value`` itself, as data: never code, never a reference.

    MONAI's config parser reads meaning into every string it holds: ``$...`` is evaluated as Python, a whole ``@id``
    is a reference to another entry, ``%...`` a macro that loads a file, and ``#`` anywhere is rewritten to ``::``
    (the old id separator). A file name, folder, run name or any other value a user gives must be none of these, so
    it travels inside a tuple, the one container the parser neither walks into (it walks dicts and lists) nor reads
    as a string, and the component :func:`given_value` hands it back. The entry is a Python literal whenever the
    value is (str, numbers, lists, dicts), so it also passes through ``python -m monai.bundle run --key "<repr>"``.

    Example::

        parser.update({"input": config_value(["$HOME_scan.nii.gz"])})   # the file, not $HOME
    """
    return {"_target_": f"{__name__}.{given_value.__name__}", "given": (value,)}


def config_values(values: Mapping[str, Any]) -> dict:
    """Each of ``values`` (config ids to user values) as a :func:`config_value` entry, for ``parser.update``."""
    return {key: config_value(value) for key, value in values.items()}


def _unwrap_config_values(config: Any) -> Any:
    """``config`` with every :func:`config_value` entry replaced by its value (for a readable record)."""
    if isinstance(config, dict):
        if config.get("_target_") == f"{__name__}.{given_value.__name__}" and isinstance(config.get("given"), tuple):
            return given_value(config["given"])
        return {key: _unwrap_config_values(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_unwrap_config_values(value) for value in config]
    return config


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<output_dir>/mlruns.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(Path(output_dir).resolve() / "mlruns.db"))


def run_name(prefix: str) -> str:
    """A run name unique to the second, e.g. ``train_classifier_20261126_120000``."""
    return f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}"


def export_executed_config(path: str | os.PathLike) -> str:
    """Write the configuration being executed (all config files merged, overrides applied) to ``path`` as JSON.

    MONAI records the executed config only under ``--tracking``; our configs track every run, so the config is
    taken from the running ``ConfigWorkflow``'s parser. Returns the path written, or an empty string when no
    workflow is running (the function was called outside a bundle run).
    """
    from monai.bundle import ConfigWorkflow

    for frame_info in inspect.stack(context=0):
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            executed = _unwrap_config_values(candidate.parser.get())
            return str(atomic_write_text(path, json.dumps(executed, indent=2, default=str) + "\n"))
    logger.warning("export_executed_config: no running bundle workflow found; nothing written")
    return ""


def persistent_run_name(output_dir: str | os.PathLike, prefix: str, resume: bool = False) -> str:
    """A run name remembered in ``output_dir/<prefix>_run_name.txt``, so a resumed run logs into the same MLflow run.

    A fresh run (``resume=False``) makes a new name and records it; a resumed run reuses the recorded one.
    """
    record = Path(output_dir) / f"{prefix}_run_name.txt"
    if resume and record.is_file():
        return record.read_text().strip()
    name = run_name(prefix)
    atomic_write_text(record, name + "\n")
    return name


def shipped_companion(
    bundle_root: str | os.PathLike, name: str, folder: str = "models", **weights: str | os.PathLike
) -> str | None:
    """The bundle's ``<folder>/<name>`` when every one of ``weights`` (setting -> path) is the bundle's own file of
    that name in ``folder`` (``generator_ckpt`` -> ``models/generator.pt``) and the bundle has that file, else
    ``None``. ``folder`` is ``models/3d`` for the native 3D weights (``configs/3d.json``).

    For weights trained for one particular set of others: the shipped counterfactual encoder fits only the shipped
    generator and encoder, so a run with a user's own generator or encoder must not pick it up by default.

    Example (config)::

        "$medxgan_monai.bundle.shipped_companion(@bundle_root, 'counterfactual_encoder.pt',
           generator_ckpt=@generator_ckpt, encoder_ckpt=@encoder_ckpt)"
    """
    models = Path(bundle_root) / folder
    for setting, path in weights.items():
        shipped = models / (setting.removesuffix("_ckpt") + ".pt")
        if path is None or Path(path).resolve() != shipped.resolve():
            return None
    companion = models / name
    return str(companion) if companion.is_file() else None


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str, required: bool = True) -> str:
    """The most recently written ``<prefix>_*.pt`` in ``ckpt_dir`` (for resuming); ``""`` if none and not required.

    Raises:
        FileNotFoundError: ``required`` and there is none, with the folder and pattern in the message.
    """
    candidates = sorted(Path(ckpt_dir).glob(f"{prefix}_*.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        if not required:
            return ""
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint '{prefix}_*.pt' to resume from; run without --resume first")
    return str(candidates[-1])


def reopen_mlflow_run(tracking_uri: str, experiment_name: str, name: str) -> str:
    """Mark the latest run called ``name`` as running again so that a resumed training appends to its history.

    MONAI's ``MLFlowHandler`` attaches to an existing run of the same name only while it is not finished; a resumed
    training must continue the same run, not start a second one. Returns the run ID, or ``""`` if there is no run.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return ""
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == name]
    if not runs:
        return ""
    run = max(runs, key=lambda r: r.info.start_time)
    client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def write_report(metrics: dict, path: str | os.PathLike) -> dict:
    """Write ``metrics`` as JSON to ``path`` (atomically), log them, and return them."""
    path = atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    logger.info("report written to %s: %s", path, json.dumps(metrics))
    return metrics


#: the bundle shipped with the package (a source checkout or an editable install)
#: the bundle an installed wheel carries (``setup.py`` copies ``bundle/`` there), else the repository's ``bundle/``
PACKAGED_BUNDLE = Path(__file__).resolve().parent / "bundle_data"
DEFAULT_BUNDLE = (
    PACKAGED_BUNDLE if (PACKAGED_BUNDLE / "configs").is_dir() else Path(__file__).resolve().parents[1] / "bundle"
)


def default_bundle_root() -> str:
    """The bundle folder a config runs with when no ``--bundle_root`` is given.

    The current folder when it is a bundle (``configs/metadata.json`` there: run from inside the bundle folder, as
    model-zoo bundles are), else ``bundle`` when that is one (the repository root), else :data:`DEFAULT_BUNDLE`.
    """
    for candidate in (Path("."), Path("bundle")):
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate)
    return str(DEFAULT_BUNDLE)


def unwrap_config_error(error: BaseException) -> BaseException:
    """MONAI wraps errors raised inside config expressions in a plain RuntimeError; return the original."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None and type(error) is RuntimeError:
        error = error.__cause__
    return error


def inference_config(bundle_root: str | os.PathLike = DEFAULT_BUNDLE, overlays: Sequence[str] = (), **values: Any):
    """The parsed-on-demand ``configs/inference.json`` of ``bundle_root`` (with the bundle's config files
    ``overlays`` on top: :func:`overlay_configs`) on the CPU, for scripts and tests that take its networks,
    preprocessing or explainers; ``bundle_root`` and ``values`` (e.g. ``generator_ckpt``) are data
    (:func:`config_value`), never config expressions.

    Example::

        explainers = inference_config("bundle", methods=["gradcam"]).get_parsed_content("explainers")
    """
    import torch
    from monai.bundle import ConfigParser

    config = ConfigParser()
    names = ("inference.json", *overlay_configs(bundle_root, overlays))
    config.read_config([str(Path(bundle_root) / "configs" / name) for name in names])
    config.update(config_values({"bundle_root": str(bundle_root), "device": torch.device("cpu"), **values}))
    return config


def run_inference(overrides: dict, bundle_root: str | os.PathLike = DEFAULT_BUNDLE, overlays: Sequence[str] = ()):
    """Run ``configs/inference.json`` of ``bundle_root`` with ``overrides`` (e.g. ``input``, ``output_dir``,
    ``methods``) and return its :class:`~medxgan_monai.handlers.InferenceReport`; inputs that could not be explained
    are in ``report.problems`` (not raised). Any other failure is raised unwrapped.

    Every override value (and ``bundle_root``) is data (:func:`config_value`): a path such as ``$HOME_scan.nii.gz``
    or ``scan#2.dcm`` is that file, never a config expression, reference or macro. Keys are config ids
    (``network_def#block_config`` sets one argument of the network). ``overlays`` are config files of the bundle
    added on top of ``inference.json`` (:func:`overlay_configs`; ``["3d.json"]``: the 3D explainer of volumes). To
    run the bundle again and again on new inputs with the same networks, use :class:`InferencePipeline`, which loads
    the weights once.

    Example::

        report = run_inference({"input": ["scan.dcm"], "output_dir": "out/", "methods": ["medxgan"]})
    """
    return _run_inference_workflow(overrides, bundle_root, overlays=overlays)[0]


#: the bundle's config overlays for each number of spatial dimensions (``--spatial-dims`` of the console commands)
SPATIAL_OVERLAYS: dict[int, tuple[str, ...]] = {2: (), 3: ("3d.json",)}


def overlay_configs(bundle_root: str | os.PathLike, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` when each is a config file of the bundle (a plain file name under ``configs/``, e.g. ``3d.json``),
    to add on top of a workflow's configs. Never a path: a setting cannot make a workflow run another file's
    expressions.

    Raises:
        ValueError: a name that is a path, not a ``.json`` name, or not a file of the bundle's configs.
    """
    folder = Path(bundle_root) / "configs"
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".json"):
            raise ValueError(f"an overlay is the name of a config file of the bundle (e.g. 3d.json), not {name!r}")
        if not (folder / name).is_file():
            raise ValueError(f"no config {name} in {folder}")
    return tuple(names)


def _run_inference_workflow(
    overrides: dict, bundle_root: str | os.PathLike, locator=None, overlays: Sequence[str] = ()
):
    """:func:`run_inference`, also returning the workflow's parser (whose built components can be reused); a
    ``locator`` (MONAI's ``ComponentLocator``) that already indexed the short ``_target_`` names is reused."""
    from monai.bundle import ConfigWorkflow

    from medxgan_monai.handlers.explanation import InferenceFailed

    configs = Path(bundle_root) / "configs"
    files = [str(configs / name) for name in ("inference.json", *overlay_configs(bundle_root, overlays))]
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        **config_values({"bundle_root": str(bundle_root), **overrides}),
    )
    if locator is not None:
        workflow.parser.locator = locator
    try:
        workflow.initialize()
        workflow.run()
    except Exception as error:
        failure = unwrap_config_error(error)
        if failure is error:
            raise
        if not isinstance(failure, InferenceFailed):
            raise failure from None  # its own traceback is kept; MONAI's wrapper adds nothing
    finally:
        workflow.finalize()
    return workflow.parser.get_parsed_content("report"), workflow.parser


class InferencePipeline:
    """The inference bundle kept warm: :meth:`run` explains new inputs with the same ``overrides``, and the networks
    (the classifier with its weights, and the explainers with the generator and encoder they loaded) are built by the
    first run that builds them and handed to every later run, so a service such as the DICOM node parses the config
    per batch (milliseconds) but reads the weights once. Everything else (dataset, writers, ledger, report, MLflow run)
    is built per run from its inputs, as :func:`run_inference` does.

    Args:
        overrides: the bundle overrides every run shares (``methods``, weights, ``device``, settings): the reused
            networks were built with them, so they are fixed for the pipeline's life.
        bundle_root: the bundle folder.

    Example::

        pipeline = InferencePipeline({"methods": ["medxgan_ig"]})
        pipeline.run({"input": ["a.dcm"], "output_dir": "out/"})    # loads the weights
        pipeline.run({"input": ["b.dcm"], "output_dir": "out/"})    # reuses them
    """

    #: the config ids whose built objects later runs reuse: everything that holds network weights
    REUSED = ("classifier_net", "explainers")

    def __init__(
        self,
        overrides: dict | None = None,
        bundle_root: str | os.PathLike = DEFAULT_BUNDLE,
        overlays: Sequence[str] = (),
    ) -> None:
        self.overrides = dict(overrides or {})
        self.overlays = overlay_configs(bundle_root, overlays)
        if reused := set(self.REUSED) & set(self.overrides):
            raise ValueError(f"{sorted(reused)} are built by the pipeline and cannot be overridden")
        self.bundle_root = bundle_root
        self.built: dict[str, Any] = {}
        # a new parser's locator indexes every loaded MONAI module on first use (~0.05 s per run): index them once
        self.locator = None

    def run(self, overrides: dict):
        """Run the bundle on ``overrides`` (e.g. ``input`` and ``output_dir``) over the pipeline's own; returns the
        run's :class:`~medxgan_monai.handlers.InferenceReport`. Raises as :func:`run_inference` does."""
        if changed := set(overrides) & set(self.overrides):
            raise ValueError(f"{sorted(changed)} are fixed for this pipeline (its networks were built with them)")
        report, parser = _run_inference_workflow(
            {**self.overrides, **overrides, **self.built}, self.bundle_root, self.locator, self.overlays
        )
        self.locator = parser.locator
        if not self.built:
            try:
                self.built = {name: parser.get_parsed_content(name) for name in self.REUSED}
            except Exception:  # e.g. weights that do not load: the next run builds (and reports) them again
                logger.exception("the inference networks could not be kept for the next run")
        return report
