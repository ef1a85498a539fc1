"""The quality gate: export a model only when it is good enough and better than the one in production.

Both sides are :class:`~arcface.contracts.EvaluationSummary` objects read from the evaluate step's output, so
the gate compares like with like and never guesses at a layout.
"""

from __future__ import annotations

import dataclasses
import math

from arcface.contracts import EvaluationSummary


@dataclasses.dataclass(frozen=True)
class GateDecision:
    deploy: bool
    reason: str


def decide(candidate: EvaluationSummary, accuracy_threshold: float,
           current: EvaluationSummary | None = None) -> GateDecision:
    """Deploy when the candidate's accuracy >= accuracy_threshold and beats the current model's (if any).

    A NaN accuracy never deploys; equal to the current model's is not better (a retrain that changes
    nothing is not shipped). ``accuracy_threshold`` 1.01 never deploys, 0 always does on its own.
    """
    accuracy = candidate.verification_accuracy
    if not math.isfinite(accuracy):
        return GateDecision(False, f"the new model's accuracy is {accuracy}; nothing is exported")
    described = f"{candidate.accuracy_description} of the new model"
    if accuracy < accuracy_threshold:
        return GateDecision(False, f"{described} is below accuracy_threshold {accuracy_threshold}")
    if current is None:
        return GateDecision(True, f"{described} >= accuracy_threshold {accuracy_threshold} and no current "
                                  "model to beat")
    if accuracy > current.verification_accuracy:
        return GateDecision(True, f"{described} >= accuracy_threshold {accuracy_threshold} and better than "
                                  f"the current model's {current.accuracy_description}")
    return GateDecision(False, f"{described} is not better than the current model's "
                               f"{current.accuracy_description}")
