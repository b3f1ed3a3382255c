"""Ignite handlers used by the bundle configs."""

from medxgan_monai.handlers.comparisons import PairedComparisons
from medxgan_monai.handlers.confusion import ConfusionMatrixSaver
from medxgan_monai.handlers.counterfactual_encoder_validation import CounterfactualEncoderValidator
from medxgan_monai.handlers.evaluation import EvaluationReport, ExplanationScorer, RandomizationTest
from medxgan_monai.handlers.explanation import ExplanationHandler, ExplanationWriter, InferenceFailed, InferenceReport
from medxgan_monai.handlers.medxgan_validation import MedXGANValidator
from medxgan_monai.handlers.robustness import RobustnessTest
from medxgan_monai.handlers.sample_grid import SampleGridSaver, sample_grid
from medxgan_monai.handlers.state_dict_saver import StateDictExporter
from medxgan_monai.handlers.training_progress import PlanProgress
from medxgan_monai.handlers.validity_stop import ValidityStop

__all__ = [
    "ConfusionMatrixSaver",
    "CounterfactualEncoderValidator",
    "EvaluationReport",
    "ExplanationScorer",
    "ExplanationHandler",
    "ExplanationWriter",
    "InferenceFailed",
    "InferenceReport",
    "MedXGANValidator",
    "PairedComparisons",
    "PlanProgress",
    "RandomizationTest",
    "RobustnessTest",
    "SampleGridSaver",
    "StateDictExporter",
    "ValidityStop",
    "sample_grid",
]
