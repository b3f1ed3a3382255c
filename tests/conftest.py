"""Shared fixtures: one tiny demo dataset per test session (32x32 pixels, a few dozen images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medxgan_monai.data import DemoDataSettings, build_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
TINY_SETTINGS = DemoDataSettings(size=32, seed=7, n_train=16, n_val=8, n_test=8)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "tiny"
    build_demo_dataset(out, TINY_SETTINGS)
    return out
