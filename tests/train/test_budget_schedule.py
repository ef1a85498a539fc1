"""With --max_minutes the learning-rate schedule follows the larger of the step and the time fraction, so a run
its budget stops early (a slower CPU) has finished its decay; without a budget nothing changes.

The reference is the schedule written out here in closed form (linear warm-up, then cosine)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from arcface.train import WarmupSchedule, train
from tests.train.conftest import tiny_config

PEAK, TOTAL, WARMUP = 0.1, 100, 10


def reference(step: float) -> float:
    if step < WARMUP:
        return PEAK * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / (TOTAL - WARMUP))
    return PEAK * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("step", [0, 5, 10, 40, 99])
def test_without_time_the_schedule_is_the_step_schedule(step):
    plain = WarmupSchedule(PEAK, TOTAL, WARMUP, "cosine")
    timed = WarmupSchedule(PEAK, TOTAL, WARMUP, "cosine", tf.Variable(0.0))
    assert float(plain(step)) == pytest.approx(reference(step), rel=1e-5, abs=1e-7)
    assert float(timed(step)) == pytest.approx(reference(step), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("step, time, as_step", [(0, 0.05, 5), (3, 0.5, 50), (20, 0.9, 90), (60, 0.3, 60),
                                                 (1, 1.0, 100)])
def test_the_larger_of_step_and_time_fraction_drives_it(step, time, as_step):
    schedule = WarmupSchedule(PEAK, TOTAL, WARMUP, "cosine", tf.Variable(time))
    assert float(schedule(step)) == pytest.approx(reference(as_step), rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_a_run_stopped_by_its_budget_has_finished_its_decay(tiny_manifest, tmp_path):
    """1,000 one-step epochs in a 10-second budget: the budget stops the run after a small share of its steps,
    and the last epoch's rate is near the end of the cosine, not near the peak."""
    config = tiny_config(tmp_path / "run", epochs=1000, steps_per_epoch=1, max_minutes=10 / 60, lr=0.1,
                         warmup_epochs=5.0)
    result = train(config, tiny_manifest, verbose=0)
    assert result.stopped == "budget" and result.epochs_completed < 500, result.epochs_completed
    rates = np.array([h["lr"] for h in result.history])
    assert rates.max() > 0.09  # the warm-up reached the peak
    assert rates[-1] < 0.1 * 0.05, rates[-5:]  # the decay finished, though most steps never ran
    assert np.all(np.diff(rates[np.argmax(rates):]) <= 1e-9)  # and fell steadily after the peak
