"""The reference trainer's learning-rate schedule (insightface's PolynomialLRWarmup, power 1, as train_v2.py
builds it), which reference_probe_torch.py re-states because the class no longer constructs under today's torch."""

from __future__ import annotations

import pytest

BENCHMARK = "reference_probe_torch"


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.1),      # the class's first step keeps the optimizer's rate: the warm-up starts at the second
    (1, 0.01),     # 1/10 of the warm-up
    (5, 0.05),
    (10, 0.1),     # warm-up done
    (55, 0.05),    # halfway through the linear decay from step 10 to 100
    (100, 0.0),
    (130, 0.0),    # past the planned end: stays at zero
])
def test_polynomial_lr_warmup_as_the_reference(bench, step, expected):
    assert bench.polynomial_lr_warmup(0.1, step, warmup=10, total=100) == pytest.approx(expected)
