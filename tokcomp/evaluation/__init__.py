"""Evaluation: accuracy and fidelity of a checkpoint (`tokcomp eval`) and budget sweeps (`tokcomp sweep`)."""

from tokcomp.evaluation.models import CheckpointModels, open_models, open_original
from tokcomp.evaluation.runner import EvalSet, Reference, evaluate_checkpoint, load_eval_set, score

__all__ = [
    "CheckpointModels",
    "EvalSet",
    "Reference",
    "evaluate_checkpoint",
    "load_eval_set",
    "open_models",
    "open_original",
    "score",
]
