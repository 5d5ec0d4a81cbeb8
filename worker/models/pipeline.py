"""The documented import path of the model-card drop-in (README "Weights"); the code lives in
:mod:`worker.inference.card_pipeline`."""

from worker.inference.card_pipeline import PreTrainedPipeline

__all__ = ["PreTrainedPipeline"]
