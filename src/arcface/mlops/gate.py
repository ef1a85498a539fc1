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
    candidate_accuracy: float = math.nan
    current_accuracy: float | None = None
    margin: float = 0.0

    def metrics(self) -> dict[str, float]:
        """The numbers for the KFP Metrics artifact (the champion's only when there is one)."""
        numbers = {"promote": float(self.deploy), "challenger_accuracy": self.candidate_accuracy,
                   "promotion_margin": self.margin}
        if self.current_accuracy is not None:
            numbers["champion_accuracy"] = self.current_accuracy
        return {key: value for key, value in numbers.items() if math.isfinite(value)}

    def markdown(self, champion_version: int | None = None) -> str:
        champion = ("none (empty store or no store)" if self.current_accuracy is None
                    else f"{self.current_accuracy:.4f}" + (f" (version {champion_version})"
                                                           if champion_version is not None else ""))
        return ("# Quality gate\n\n"
                f"**{'Promote' if self.deploy else 'Keep the champion'}**: {self.reason}.\n\n"
                "| | verification accuracy (same pairs) |\n|---|---|\n"
                f"| challenger (this run) | {self.candidate_accuracy:.4f} |\n"
                f"| champion | {champion} |\n"
                f"| promotion margin | {self.margin} |\n")


def decide(candidate: EvaluationSummary, accuracy_threshold: float,
           current: EvaluationSummary | None = None, margin: float = 0.0) -> GateDecision:
    """Deploy when the candidate's accuracy >= accuracy_threshold and beats the current model's (if any) by
    more than ``margin``.

    ``current`` should be the champion scored on the same pairs in the same run (the evaluate step does that),
    so the difference is the models' and not the pairs'. A NaN accuracy never deploys; equal to the current
    model's is not better (a retrain that changes nothing is not shipped). ``accuracy_threshold`` 1.01 never
    deploys, 0 always does on its own.
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"promotion_margin={margin} must be a number >= 0 (0: any improvement promotes)")
    accuracy = candidate.verification_accuracy
    numbers = {"candidate_accuracy": accuracy, "margin": margin,
               "current_accuracy": None if current is None else current.verification_accuracy}
    if not math.isfinite(accuracy):
        return GateDecision(False, f"the new model's accuracy is {accuracy}; nothing is exported", **numbers)
    described = f"{candidate.accuracy_description} of the new model"
    if accuracy < accuracy_threshold:
        return GateDecision(False, f"{described} is below accuracy_threshold {accuracy_threshold}", **numbers)
    if current is None:
        return GateDecision(True, f"{described} >= accuracy_threshold {accuracy_threshold} and no current "
                                  "model to beat", **numbers)
    by = f" by more than promotion_margin {margin}" if margin else ""
    # Rounded: accuracies are ratios of pair counts, and 0.97 - 0.95 must not come out above 0.02.
    if round(accuracy - current.verification_accuracy, 12) > margin:
        return GateDecision(True, f"{described} >= accuracy_threshold {accuracy_threshold} and better than "
                                  f"the current model's {current.accuracy_description}{by}", **numbers)
    return GateDecision(False, f"{described} is not better than the current model's "
                               f"{current.accuracy_description}{by}", **numbers)
