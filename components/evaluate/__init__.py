"""The evaluate step (verification and closed-set metrics) and the quality gate that follows it."""

from components.evaluate.component import evaluate_model, quality_gate

__all__ = ["evaluate_model", "quality_gate"]
