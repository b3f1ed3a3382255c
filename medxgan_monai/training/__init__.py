"""Training an explainer for any datalist: the medXGAN recipe as phases, run one after the other."""

from medxgan_monai.training.recipe import PHASE_KINDS, ExplainerTraining, Phase, PhaseError, run_bundle_workflow

__all__ = ["PHASE_KINDS", "ExplainerTraining", "Phase", "PhaseError", "run_bundle_workflow"]
