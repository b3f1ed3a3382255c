"""StateDictExporter: export at completion, or keep the best epoch by a metric and remember it across a resume."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch import nn

from medxgan_monai.handlers import StateDictExporter


def _run(exporter: StateDictExporter, module: nn.Linear, scores: list[float | None]) -> None:
    """Run one epoch per score; each epoch sets the module's bias to the epoch number and reports the score."""
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def report(engine):
        with torch.no_grad():
            module.bias.fill_(engine.state.epoch)
        score = scores[engine.state.epoch - 1]
        if score is not None:
            engine.state.metrics["val_psnr"] = score

    exporter.attach(engine)
    engine.run([0], max_epochs=len(scores))


def _exported_epoch(path) -> float:
    return torch.load(path, weights_only=True)["bias"].item()


def test_exports_at_completion_without_a_metric(tmp_path):
    module = nn.Linear(1, 1)
    _run(StateDictExporter(tmp_path, {"last.pt": module}), module, [1.0, 3.0, 2.0])
    assert _exported_epoch(tmp_path / "last.pt") == 3


def test_keeps_the_best_epoch_and_remembers_it(tmp_path):
    module = nn.Linear(1, 1)
    exporter = StateDictExporter(tmp_path, {"best.pt": module}, metric_name="val_psnr")
    _run(exporter, module, [None, 10.0, 12.0, float("nan"), 11.0])
    assert _exported_epoch(tmp_path / "best.pt") == 3
    assert exporter.state_dict() == {"best_score": 12.0, "best_epoch": 3}

    resumed = StateDictExporter(tmp_path, {"best.pt": module}, metric_name="val_psnr")
    resumed.load_state_dict(exporter.state_dict())
    _run(resumed, module, [11.5])
    assert _exported_epoch(tmp_path / "best.pt") == 3, "a worse epoch after resume must not replace the best"

    lower = StateDictExporter(tmp_path, {"lowest.pt": module}, metric_name="val_psnr", greater_is_better=False)
    _run(lower, module, [3.0, 1.0, 2.0])
    assert _exported_epoch(tmp_path / "lowest.pt") == 2

    late = StateDictExporter(tmp_path, {"late.pt": module}, metric_name="val_psnr", start_epoch=3)
    _run(late, module, [30.0, 20.0, 5.0, 6.0])
    assert _exported_epoch(tmp_path / "late.pt") == 4, "epochs before start_epoch must not count"


def test_exports_at_completion_when_the_metric_never_appears(tmp_path):
    module = nn.Linear(1, 1)
    _run(StateDictExporter(tmp_path, {"fallback.pt": module}, metric_name="val_psnr"), module, [None, None])
    assert _exported_epoch(tmp_path / "fallback.pt") == 2
