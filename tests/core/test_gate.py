"""arcface.mlops.gate.decide over a table of cases; each expectation is derived by hand from the gate's rules."""

from __future__ import annotations

import math

import pytest

from arcface.contracts import BEST_THRESHOLD, KFOLD_MEAN, EvaluationSummary
from arcface.mlops.gate import decide


def evaluation(accuracy: float, kind: str = KFOLD_MEAN) -> EvaluationSummary:
    return EvaluationSummary(verification_accuracy=accuracy, verification_accuracy_kind=kind, threshold=0.3,
                             auc=0.9, eer=0.1, genuine_pairs=100, impostor_pairs=100, flip_tta=True)


@pytest.mark.parametrize("accuracy, threshold, current, deploy, reason", [
    (0.95, 0.9, None, True, "k-fold accuracy 0.9500 of the new model >= accuracy_threshold 0.9 and no current"),
    (0.85, 0.9, None, False, "k-fold accuracy 0.8500 of the new model is below accuracy_threshold 0.9"),
    (0.95, 1.01, None, False, "is below accuracy_threshold 1.01"),  # 1.01 never exports
    (0.0, 0.0, None, True, "no current model to beat"),  # 0 always exports on its own
    (0.9, 0.9, None, True, ">= accuracy_threshold 0.9"),  # the threshold itself passes
    (0.95, 0.9, 0.97, False, "0.9500 of the new model is not better than the current model's k-fold accuracy 0.9700"),
    (0.98, 0.9, 0.97, True, "better than the current model's k-fold accuracy 0.9700"),
    (0.97, 0.9, 0.97, False, "not better"),  # equal is not better
    (0.85, 0.9, 0.5, False, "below accuracy_threshold"),  # the threshold is checked before the comparison
    (math.nan, 0.0, None, False, "the new model's accuracy is nan; nothing is exported"),
    (math.nan, 0.0, 0.5, False, "accuracy is nan"),
])
def test_decide(accuracy, threshold, current, deploy, reason):
    decision = decide(evaluation(accuracy), threshold, None if current is None else evaluation(current))
    assert decision.deploy is deploy
    assert reason in decision.reason


def test_the_reason_says_when_the_accuracy_is_the_best_threshold_one():
    decision = decide(evaluation(0.8, BEST_THRESHOLD), 0.5)
    assert decision.deploy and decision.reason.startswith("best-threshold accuracy 0.8000 of the new model")


@pytest.mark.parametrize("accuracy, current, margin, deploy", [
    (0.96, 0.95, 0.02, False),   # better, but not by the margin
    (0.975, 0.95, 0.02, True),   # 0.025 > 0.02
    (0.97, 0.95, 0.02, False),   # exactly the margin is not more than it
    (0.96, None, 0.5, True),     # no champion: the threshold alone decides, whatever the margin
])
def test_promotion_margin(accuracy, current, margin, deploy):
    decision = decide(evaluation(accuracy), 0.9, None if current is None else evaluation(current), margin)
    assert decision.deploy is deploy
    assert ("promotion_margin" in decision.reason) is (current is not None)
    numbers = decision.metrics()
    assert numbers["promote"] == float(deploy) and numbers["challenger_accuracy"] == accuracy
    assert numbers.get("champion_accuracy") == current
    assert f"| challenger (this run) | {accuracy:.4f} |" in decision.markdown()


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="promotion_margin=-0.1 must be a number >= 0"):
        decide(evaluation(0.9), 0.5, None, -0.1)
