"""Training an explainer for any datalist: the medXGAN recipe as phases, run one after the other, optionally fitted
into a time budget."""

from medxgan_monai.training.budget import BudgetError, Calibration
from medxgan_monai.training.recipe import PHASE_KINDS, ExplainerTraining, Phase, PhaseError, run_bundle_workflow

__all__ = [
    "PHASE_KINDS",
    "BudgetError",
    "Calibration",
    "ExplainerTraining",
    "Phase",
    "PhaseError",
    "run_bundle_workflow",
]
