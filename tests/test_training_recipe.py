"""The training recipe as phases in images seen (issue 22): the epochs each phase gets for a datalist's size, the
checks on a recipe, and the whole recipe run through ``train_explainer.json`` on a tiny datalist, resumed after an
interruption without running a finished phase again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import BUNDLE_ROOT, TINY_EVALUATION, TINY_TRAINING

from medxgan_monai.training import ExplainerTraining, Phase, PhaseError, run_bundle_workflow


def test_phase_lengths_in_images_seen_become_epochs_for_any_datalist_size():
    gan = Phase("gan", "gan", gan_images=120_000)
    assert gan.epochs(2000) == {
        "train#trainer#max_epochs": 60,
        "train#trainer#gan_stop_epoch": 61,
        "train#trainer#encoder_start_epoch": 61,
    }, "the demo's 2,000 images: the shipped 60 epochs"
    assert gan.epochs(600)["train#trainer#max_epochs"] == 200
    assert gan.epochs(20_000)["train#trainer#max_epochs"] == 6
    assert gan.epochs(10**6)["train#trainer#max_epochs"] == 1, "at least one epoch"
    finetune = Phase("finetune", "gan", gan_images=30_000, encoder_images=40_000)
    assert finetune.epochs(2000) == {
        "train#trainer#max_epochs": 35,
        "train#trainer#gan_stop_epoch": 16,
        "train#trainer#encoder_start_epoch": 16,
    }, "scripts/train_gan.sh's second run"
    encoder = Phase("encoder", "gan", encoder_images=40_000)
    assert encoder.epochs(2000)["train#trainer#gan_stop_epoch"] == 1, "G frozen from the start"
    assert Phase("c", "classifier", images=60_000).epochs(1500) == {"train#trainer#max_epochs": 40}


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"name": "../up", "kind": "gan", "gan_images": 1}, "names a folder"),
        ({"name": "x", "kind": "vae", "images": 1}, "kind 'vae'"),
        ({"name": "x", "kind": "gan"}, "needs gan_images or encoder_images"),
        ({"name": "x", "kind": "classifier", "images": -5}, "whole number >= 0"),
        ({"name": "x", "kind": "classifier", "images": 10, "gan_images": 3}, "no gan_/encoder_images"),
        ({"name": "x", "kind": "gan", "gan_images": 1, "epochs": 3}, "unknown field"),
    ],
)
def test_a_malformed_phase_is_refused_with_its_problem(fields, problem):
    with pytest.raises(PhaseError, match=problem):
        Phase.of(fields)


def test_a_recipe_whose_phases_are_out_of_order_is_refused(tiny_demo):
    gan = {"name": "gan", "kind": "gan", "gan_images": 1}
    classifier = {"name": "classifier", "kind": "classifier", "images": 1}
    cf = {"name": "cf", "kind": "counterfactual_encoder", "images": 1}
    datalist = tiny_demo / "datalist.json"
    with pytest.raises(PhaseError, match="needs a classifier"):
        ExplainerTraining(datalist, "out", [gan])
    with pytest.raises(PhaseError, match="comes first"):
        ExplainerTraining(datalist, "out", [gan, classifier])
    with pytest.raises(PhaseError, match="needs a GAN phase before it"):
        ExplainerTraining(datalist, "out", [classifier, cf, gan])
    with pytest.raises(PhaseError, match="unique"):
        ExplainerTraining(datalist, "out", [classifier, gan, gan])
    # with a classifier of one's own, the recipe's classifier phase is left out
    assert [p.name for p in ExplainerTraining(datalist, "out", [classifier, gan], classifier_ckpt="c.pt").phases] == [
        "gan"
    ]


#: the GAN phases' validator (the counterfactual encoder phase has a validator of its own, without samples)
FEW_SAMPLES = {"validation#num_samples": 20}
#: 16 training images: one epoch per phase (two for the fine-tune: one of G and D, one of E)
TINY_PHASES = [
    {"name": "classifier", "kind": "classifier", "images": 16},
    {"name": "gan", "kind": "gan", "gan_images": 16, "settings": FEW_SAMPLES},
    {
        "name": "gan_finetune",
        "kind": "gan",
        "gan_images": 16,
        "encoder_images": 16,
        "settings": {"train#trainer#lambda_classifier": 6.0, **FEW_SAMPLES},
    },
    {"name": "counterfactual_encoder", "kind": "counterfactual_encoder", "images": 16},
]


def _train_explainer(datalist: Path, output_dir: Path) -> None:
    """``python -m monai.bundle run --config_file train_explainer.json`` with the tiny recipe."""
    overrides = {"datalist": str(datalist), "output_dir": str(output_dir), "phases": TINY_PHASES}
    overrides.update(settings=TINY_TRAINING, evaluation_settings=TINY_EVALUATION)
    run_bundle_workflow(BUNDLE_ROOT, ["train_explainer.json"], "train", overrides)


def test_the_recipe_runs_phase_by_phase_evaluates_and_resumes_without_redoing_a_phase(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "explainer"
    lines = []  # the bundle's logging.conf replaces the root logger's handlers (pytest's too): listen to ours
    listener = logging.Handler(logging.INFO)
    listener.emit = lambda record: lines.append(record.getMessage())
    progress_logger = logging.getLogger("medxgan_monai.training")
    progress_logger.addHandler(listener)
    try:
        _train_explainer(tiny_demo / "datalist.json", out)
    finally:
        progress_logger.removeHandler(listener)
    # one line per epoch of each phase (the fine-tune has two), with its validation and the plan's time left
    lines = [line for line in lines if "left for the plan" in line]
    assert [line.split(":")[0] for line in lines] == [
        "phase 1/4 classifier, epoch 1/1",
        "phase 2/4 gan, epoch 1/1",
        "phase 3/4 gan_finetune, epoch 1/2",
        "phase 3/4 gan_finetune, epoch 2/2",
        "phase 4/4 counterfactual_encoder, epoch 1/1",
    ]
    assert "val_auc" in lines[0] and "val_cf_validity_negative" in lines[1] and "val_inversion_psnr" in lines[3]
    assert "val_cf_validity nan" in lines[-1] and "about 0:00:00 left for the plan" in lines[-1]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["training_images"] == 16
    assert [p["epochs"]["train#trainer#max_epochs"] for p in plan["phases"]] == [1, 1, 2, 1]
    finished = {}
    for phase in TINY_PHASES:
        record = json.loads((out / phase["name"] / "phase_complete.json").read_text())
        assert record["resumed"] is False and record["seconds"] > 0
        finished[phase["name"]] = (out / phase["name"] / "phase_complete.json").stat().st_mtime_ns
    # each phase started from the one before: the fine-tune from the GAN phase's checkpoint
    executed = json.loads(next((out / "gan_finetune").glob("config_train_gan_*.json")).read_text())
    assert "gan_checkpoint_epoch=1.pt" in str(executed["init_ckpt"])
    assert (out / "counterfactual_encoder" / "models" / "counterfactual_encoder.pt").is_file()
    (evaluated,) = (out / "evaluation").glob("evaluation_*")
    assert (evaluated / "metrics_per_image.csv").is_file()
    report = (out / "report.md").read_text()
    assert "| gan_finetune | gan | 2 | 2 |" in report and "## Evaluation" in report and "val_auc" in report
    classifier = json.loads((out / "evaluation.json").read_text())["classifier"]
    assert 0 <= classifier["test_auc"] <= 1 and 0 <= classifier["test_sensitivity"] <= 1
    assert f"test_auc {classifier['test_auc']:.3f}" in report, "the classifier's test AUC in the report"
    assert "![training curves](curves.png)" in report and (out / "curves.png").is_file()

    # interrupted during the last phase: its marker is gone, its checkpoint is there
    (out / "counterfactual_encoder" / "phase_complete.json").unlink()
    _train_explainer(tiny_demo / "datalist.json", out)
    for name in ("classifier", "gan", "gan_finetune"):
        assert (out / name / "phase_complete.json").stat().st_mtime_ns == finished[name], f"{name} ran again"
    record = json.loads((out / "counterfactual_encoder" / "phase_complete.json").read_text())
    assert record["resumed"] is True
    assert len(list((out / "evaluation").glob("evaluation_*"))) == 2, "new weights: evaluated again, nothing replaced"


def test_the_command_names_a_datalist_that_cannot_be_trained_on(tmp_path, capsys):
    from medxgan_monai.cli.train import main

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "validation": []}))
    assert main([str(datalist), "--output-dir", str(tmp_path / "out"), "--no-evaluation"]) == 2
    assert "training section is empty" in capsys.readouterr().err


class _GanPhase:
    """An Ignite engine standing in for MedXGANTrainer: it records, per epoch, whether G and D trained, and a
    validator attached after the stop handler writes each epoch's validity from ``validity`` (epoch -> value)."""

    def __init__(self, gan_epochs: int, encoder_epochs: int, validity: dict[int, tuple[float, float]]):
        from ignite.engine import Engine, Events

        self.trained: dict[int, str] = {}

        def step(engine, batch):
            gan = engine.gan_stop_epoch is None or engine.state.epoch < engine.gan_stop_epoch
            self.trained[engine.state.epoch] = "gan" if gan else "encoder"

        self.engine = Engine(step)
        self.engine.gan_stop_epoch = self.engine.encoder_start_epoch = gan_epochs + 1
        self.max_epochs = gan_epochs + encoder_epochs

        def validate(engine):
            negative, positive = validity.get(engine.state.epoch, (0.5, 0.5))
            engine.state.metrics.update(val_cf_validity_negative=negative, val_cf_validity_positive=positive)

        from medxgan_monai.handlers import ValidityStop

        ValidityStop(0.95).attach(self.engine)
        self.engine.add_event_handler(Events.EPOCH_COMPLETED, validate)

    def run(self) -> dict[int, str]:
        self.engine.run([0, 1], max_epochs=self.max_epochs)
        return self.trained


def test_a_gan_phase_stops_training_g_once_its_counterfactuals_are_valid_both_ways():
    valid_after_3 = {3: (0.97, 0.96), 4: (0.99, 0.99)}
    assert _GanPhase(10, 0, valid_after_3).run() == {1: "gan", 2: "gan", 3: "gan"}, "the phase ends"
    # with encoder epochs after: they all follow at once
    expected = {1: "gan", 2: "gan", 3: "encoder", 4: "encoder", 5: "encoder", 6: "encoder"}
    assert _GanPhase(5, 4, {2: (0.96, 0.95)}).run() == expected
    # valid one way only, or never: every planned epoch
    assert len(_GanPhase(4, 2, {2: (0.99, 0.90)}).run()) == 6
    assert _GanPhase(3, 0, {}).run() == {1: "gan", 2: "gan", 3: "gan"}
    with pytest.raises(ValueError, match="target"):
        from medxgan_monai.handlers import ValidityStop

        ValidityStop(0.0)
