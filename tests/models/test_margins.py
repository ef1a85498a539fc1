"""Margin heads against a NumPy reference, including angles near 0, pi/2 and pi."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from arcface.models.margins import combined_margin_target, margin_logits


def reference_target(cos, m1, m2, m3, easy_margin=False):
    """Straight from the papers: ArcFace eq. 3 with insightface's fallback, SphereFace's psi, CosFace."""
    cos = np.asarray(cos, np.float64)
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    if m1 == 1 and m2 == 0:
        return cos - m3
    if m2 > 0:
        target = np.cos(m1 * theta + m2) - m3
        if easy_margin:
            return np.where(cos > 0, target, cos - m3)
        return np.where(m1 * theta + m2 <= math.pi, target, cos - m2 * math.sin(m2) - m3)
    k = np.floor(m1 * theta / math.pi)
    return (-1.0) ** k * np.cos(m1 * theta) - 2 * k - m3


VARIANTS = {
    "arcface": (1.0, 0.5, 0.0, False),
    "arcface_easy": (1.0, 0.5, 0.0, True),
    "cosface": (1.0, 0.0, 0.35, False),
    "sphereface": (1.7, 0.0, 0.0, False),
    "combined": (1.0, 0.3, 0.2, False),
    "large_angular": (1.0, 1.2, 0.0, False),
}
SPECIAL = np.array([1.0, 1 - 1e-7, 0.999, 0.5, 1e-6, 0.0, -1e-6, -0.5, -0.999, -1 + 1e-7, -1.0], np.float32)


@pytest.mark.parametrize("name", VARIANTS)
def test_target_matches_reference(name):
    m1, m2, m3, easy = VARIANTS[name]
    rng = np.random.default_rng(0)
    cos = np.concatenate([rng.uniform(-1, 1, 2000).astype(np.float32), SPECIAL])
    got = combined_margin_target(tf.constant(cos), m1, m2, m3, easy).numpy()
    want = reference_target(cos, m1, m2, m3, easy)
    # The clip keeps |cos| <= 1 - 1e-6, which moves theta by at most ~1.4e-3 rad right at +-1.
    np.testing.assert_allclose(got, want, atol=3e-3)
    interior = np.abs(cos) < 0.999
    np.testing.assert_allclose(got[interior], want[interior], atol=1e-5)


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if not v[3]])  # easy margin jumps at pi/2
def test_target_decreases_with_angle(name):
    m1, m2, m3, _ = VARIANTS[name]
    cos = np.cos(np.linspace(0, math.pi, 4001)).astype(np.float32)
    got = combined_margin_target(tf.constant(cos), m1, m2, m3).numpy()
    assert np.all(np.diff(got) <= 1e-5), "a larger angle must never give a larger target logit"


@pytest.mark.parametrize("name", VARIANTS)
def test_value_and_gradient_finite_at_the_poles(name):
    m1, m2, m3, easy = VARIANTS[name]
    cos = tf.Variable(SPECIAL)
    with tf.GradientTape() as tape:
        out = combined_margin_target(cos, m1, m2, m3, easy)
        loss = tf.reduce_sum(out)
    grad = tape.gradient(loss, cos).numpy()
    assert np.all(np.isfinite(out.numpy()))
    assert np.all(np.isfinite(grad))


def test_margin_logits_only_touch_the_true_class():
    rng = np.random.default_rng(1)
    cos = rng.uniform(-1, 1, (8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    got = margin_logits(tf.constant(cos), tf.constant(labels), 64.0, 1.0, 0.5, 0.0).numpy()
    want = 64.0 * cos.astype(np.float64)
    want[np.arange(8), labels] = 64.0 * reference_target(cos[np.arange(8), labels], 1.0, 0.5, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_arcface_penalises_the_true_class():
    cos = tf.constant([[0.8, 0.1]])
    logits = margin_logits(cos, tf.constant([0]), 10.0, 1.0, 0.5, 0.0).numpy()
    assert logits[0, 0] == pytest.approx(10 * math.cos(math.acos(0.8) + 0.5), rel=1e-5)
    assert logits[0, 1] == pytest.approx(1.0, rel=1e-5)
