"""The training recipe in a time budget (issue 22): the cost model and the fit, the stopwatch that measures it, and
the one command with a budget too small to train anything, then with one that makes it shorten every phase."""

from __future__ import annotations

import json
import time

import pytest
from conftest import BUNDLE_ROOT, TINY_TRAINING

from medxgan_monai.training import BudgetError, Calibration, Phase, run_bundle_workflow
from medxgan_monai.training.budget import (
    CLASSIFIER_SHARE,
    PLANNED_SHARE,
    EpochStopwatch,
    fit_to_budget,
    phase_seconds,
    scaled,
)

RECIPE = [
    Phase("classifier", "classifier", images=60_000),
    Phase("gan", "gan", gan_images=120_000),
    Phase("finetune", "gan", gan_images=30_000, encoder_images=40_000),
    Phase("counterfactual_encoder", "counterfactual_encoder", images=112_000),
]
#: a machine where an epoch of 2,000 images (63 iterations) costs 10 s + 5 s of validation, and a run 20 s to start
MEASURED = Calibration(
    iteration={"classifier": 0.1, "gan": 0.4, "encoder": 0.2, "counterfactual_encoder": 0.3},
    epoch_overhead={"classifier": 2.0, "gan": 5.0, "counterfactual_encoder": 3.0},
    fixed={"classifier": 20.0, "gan": 25.0, "counterfactual_encoder": 22.0},
    iterations_per_epoch={"classifier": 63, "gan": 63, "counterfactual_encoder": 63},
    seconds=90.0,
)


def test_a_phase_costs_its_start_plus_its_epochs_of_each_stage():
    # the fine-tune on 2,000 images: 15 epochs of G and D, 20 of the encoder
    expected = 25.0 + 15 * (63 * 0.4 + 5.0) + 20 * (63 * 0.2 + 5.0)
    assert phase_seconds(RECIPE[2], 2000, MEASURED) == pytest.approx(expected)
    assert phase_seconds(RECIPE[0], 2000, MEASURED) == pytest.approx(20.0 + 30 * (63 * 0.1 + 2.0))


def test_the_budget_shortens_the_phases_by_one_factor_until_the_plan_fits():
    full = sum(phase_seconds(phase, 2000, MEASURED) for phase in RECIPE)
    assert fit_to_budget(RECIPE, 2000, MEASURED, full / PLANNED_SHARE + 1)[0] == 1.0, "it fits: the recipe as written"
    for share in (0.5, 0.2, 0.1):
        scale, phases = fit_to_budget(RECIPE, 2000, MEASURED, share * full)
        planned = sum(phase_seconds(phase, 2000, MEASURED) for phase in phases)
        assert 0 < scale < 1 and planned <= PLANNED_SHARE * share * full
        assert planned > 0.8 * PLANNED_SHARE * share * full, "the largest plan that fits, not any plan that fits"
        assert phases[1].gan_images == round(120_000 * scale) and phases[2].encoder_images == round(40_000 * scale)
    with pytest.raises(BudgetError, match=r"too small to train anything.*shortest plan \(one epoch per stage"):
        fit_to_budget(RECIPE, 2000, MEASURED, 60.0)


def test_the_classifier_goes_first_within_its_share_of_the_plan():
    full = sum(phase_seconds(phase, 2000, MEASURED) for phase in RECIPE)
    # 40% of the recipe's time: the whole classifier fits in a quarter of the plan, the GAN phases share the rest
    scale, phases = fit_to_budget(RECIPE, 2000, MEASURED, 0.4 * full)
    assert phases[0].images == 60_000 and 0 < scale < 1
    assert phases[1].gan_images == round(120_000 * scale), "the other phases by one factor"
    assert sum(phase_seconds(phase, 2000, MEASURED) for phase in phases) <= PLANNED_SHARE * 0.4 * full
    # 10%: the classifier is shortened to its share (at most a quarter of the plan), never below the common factor
    scale, phases = fit_to_budget(RECIPE, 2000, MEASURED, 0.1 * full)
    room = PLANNED_SHARE * 0.1 * full
    classifier = phase_seconds(phases[0], 2000, MEASURED)
    assert phases[0].images / 60_000 > scale and classifier <= CLASSIFIER_SHARE * room
    assert classifier > CLASSIFIER_SHARE * room - (63 * 0.1 + 2.0), "the largest classifier within its share"
    assert sum(phase_seconds(phase, 2000, MEASURED) for phase in phases) <= room


def test_the_stopwatch_separates_iterations_from_what_each_epoch_adds():
    from ignite.engine import Engine, Events

    engine = Engine(lambda engine, batch: time.sleep(0.01))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: time.sleep(0.1))  # validation, checkpoints
    stopwatch = EpochStopwatch()
    stopwatch.attach(engine)
    engine.run(range(6), max_epochs=2)
    assert [epoch["iterations"] for epoch in stopwatch.epochs] == [6, 6]
    for epoch in stopwatch.epochs:
        assert 0.009 <= epoch["iteration_seconds"] < 0.05 and 0.1 <= epoch["overhead_seconds"] < 0.5
    calibration = Calibration()
    with pytest.raises(BudgetError, match="gan calibration run gave 2 epoch"):
        calibration.record("gan", 1.0, stopwatch.epochs[:1] + [{**stopwatch.epochs[1], "iterations": 1}], 6)


#: the recipe's kinds with the shipped GAN phases' settings merged (each kind is calibrated with its phases' settings
#: merged: the same as the shipped recipe's, so its calibration is reused), several epochs each on 16 training images
BUDGET_PHASES = [
    {"name": "classifier", "kind": "classifier", "images": 64},
    {"name": "gan", "kind": "gan", "gan_images": 64},
    {
        "name": "finetune",
        "kind": "gan",
        "gan_images": 32,
        "encoder_images": 32,
        "settings": {"train#trainer#lambda_classifier": 6.0, "train#trainer#lambda_counterfactual": 1.0},
    },
    {"name": "counterfactual_encoder", "kind": "counterfactual_encoder", "images": 48},
]


def test_a_budget_too_small_is_refused_clearly_and_a_larger_one_shortens_the_phases(tiny_demo, tmp_path, capsys):
    from medxgan_monai.cli.train import main

    out = tmp_path / "budget"
    settings = [f"--set={key}={json.dumps(value)}" for key, value in TINY_TRAINING.items()]
    command = [str(tiny_demo / "datalist.json"), "--output-dir", str(out), "--no-evaluation", *settings]
    assert main([*command, "--max-minutes", "0.02"]) == 2
    error = capsys.readouterr().err
    assert "too small to train anything" in error and "needs about" in error
    calibration = Calibration.of(json.loads((out / "calibration.json").read_text())["calibration"])
    assert set(calibration.iteration) == {"classifier", "gan", "encoder", "counterfactual_encoder"}
    assert all(value > 0 for value in calibration.iteration.values())
    assert calibration.iterations_per_epoch == {"classifier": 2, "gan": 2, "counterfactual_encoder": 2}
    assert not (out / "classifier" / "phase_complete.json").exists(), "nothing trained"
    calibrated = (out / "calibration.json").stat().st_mtime_ns

    # a budget half-way between the shortest plan and the whole recipe: every phase shortened, none below one epoch
    phases = [Phase.of(entry) for entry in BUDGET_PHASES]
    full = sum(phase_seconds(phase, 16, calibration) for phase in phases)
    shortest = sum(phase_seconds(scaled(phase, 0.0), 16, calibration) for phase in phases)
    minutes = (calibration.seconds + (full + shortest) / 2 / PLANNED_SHARE) / 60
    overrides = {"datalist": str(tiny_demo / "datalist.json"), "output_dir": str(out), "phases": BUDGET_PHASES}
    overrides.update(settings=TINY_TRAINING, max_minutes=minutes, evaluate=False)
    run_bundle_workflow(BUNDLE_ROOT, ["train_explainer.json"], "train", overrides)

    assert (out / "calibration.json").stat().st_mtime_ns == calibrated, "the same datalist and settings: reused"
    plan = json.loads((out / "plan.json").read_text())
    assert 0 < plan["budget"]["scale"] < 1
    planned = [phase["epochs"]["train#trainer#max_epochs"] for phase in plan["phases"]]
    assert all(epochs >= 1 for epochs in planned) and sum(planned) < 4 + 4 + 4 + 3, planned
    assert plan["budget"]["estimated_seconds"] <= PLANNED_SHARE * (minutes * 60 - calibration.seconds)
    for phase in plan["phases"]:
        record = json.loads((out / phase["name"] / "phase_complete.json").read_text())
        assert record["epochs"] == phase["epochs"]
        history = (out / phase["name"] / "history.jsonl").read_text().splitlines()
        assert len(history) == phase["epochs"]["train#trainer#max_epochs"], "one history line per epoch"
    report = (out / "report.md").read_text()
    assert "Time budget:" in report and "![training curves](curves.png)" in report
    assert (out / "curves.png").stat().st_size > 1000


def test_a_budgeted_plan_shortens_the_phases_left_when_the_phases_so_far_took_longer(tiny_demo, tmp_path, monkeypatch):
    from medxgan_monai.training import ExplainerTraining

    monkeypatch.setattr(ExplainerTraining, "calibrate", lambda self: MEASURED)
    out = tmp_path / "replan"
    # 16 training images: the MEASURED machine's 63 iterations per epoch stand for a larger datalist
    training = ExplainerTraining(tiny_demo / "datalist.json", out, RECIPE, max_minutes=60, evaluate=False)
    plan = training.plan()
    scale = json.loads((out / "plan.json").read_text())["budget"]["scale"]
    assert 0 < scale < 1

    def finish(index: int, seconds: float) -> None:
        (out / plan[index]["name"]).mkdir(exist_ok=True)
        (out / plan[index]["name"] / "phase_complete.json").write_text(json.dumps({"seconds": seconds}))

    finish(0, plan[0]["estimated_seconds"] * 0.9)  # faster than estimated: the plan stays (never lengthened)
    before = [dict(entry) for entry in plan]
    training._replan(plan, 1)
    assert plan == before
    finish(1, plan[1]["estimated_seconds"] * 1.5)  # slower: the phases left are shortened to fit the time left
    training._replan(plan, 2)
    record = json.loads((out / "plan.json").read_text())
    (replanned,) = record["budget"]["replanned"]
    assert replanned["before"] == "finetune" and replanned["scale"] < scale and replanned["ratio"] > 1
    # (plan.json rounds the scale to 4 decimals: 30,000 images are within 2 of it)
    assert abs(record["phases"][2]["gan_images"] - 30_000 * replanned["scale"]) <= 2
    assert record["phases"][2]["gan_images"] < before[2]["gan_images"]
    assert record["phases"][:2] == before[:2], "finished phases keep their entries"
    left = (
        60 * 60
        - MEASURED.seconds
        - sum(entry["estimated_seconds"] * f for entry, f in zip(before[:2], (0.9, 1.5), strict=True))
    )
    ratio = replanned["ratio"]
    assert sum(ratio * entry["estimated_seconds"] for entry in record["phases"][2:]) <= PLANNED_SHARE * left
    finish(2, 10 * 60 * 60)  # far over: the last phase runs one epoch, the budget is exceeded
    training._replan(plan, 3)
    assert plan[3]["epochs"] == {"train#trainer#max_epochs": 1}
