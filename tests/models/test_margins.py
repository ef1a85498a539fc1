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


def _logits_and_gradient(cos, labels, upstream, gradient):
    cos = tf.constant(cos)
    with tf.GradientTape() as tape:
        tape.watch(cos)
        logits = margin_logits(cos, tf.constant(labels), 64.0, 1.0, 0.5, 0.0, gradient=gradient)
        loss = tf.reduce_sum(logits * upstream)
    return logits.numpy(), tape.gradient(loss, cos).numpy()


def test_straight_through_margin_has_the_margins_value_and_the_cosines_gradient():
    """insightface's CombinedMarginLoss: s*cos(theta+m) forward, d(s*cos theta) backward; both against NumPy."""
    rng = np.random.default_rng(2)
    cos = rng.uniform(-0.99, 0.99, (16, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 16)
    upstream = rng.normal(size=(16, 6)).astype(np.float32)
    rows = np.arange(16)
    want = 64.0 * cos.astype(np.float64)
    want[rows, labels] = 64.0 * reference_target(cos[rows, labels], 1.0, 0.5, 0.0)
    exact_logits, exact_grad = _logits_and_gradient(cos, labels, upstream, "exact")
    st_logits, st_grad = _logits_and_gradient(cos, labels, upstream, "straight_through")
    np.testing.assert_allclose(st_logits, want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(st_logits, exact_logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(st_grad, 64.0 * upstream, rtol=1e-6)  # d(s*cos)/dcos = s, every class
    # The exact margin is unchanged: d cos(theta+m)/d cos(theta) = sin(theta+m)/sin(theta) on the true class
    # (theta+m <= pi here unless the fallback cos - m*sin(m) applies, whose derivative is 1).
    theta = np.arccos(cos[rows, labels].astype(np.float64))
    slope = np.where(theta + 0.5 <= math.pi, np.sin(theta + 0.5) / np.sin(theta), 1.0)
    want_grad = 64.0 * upstream.astype(np.float64)
    want_grad[rows, labels] *= slope
    np.testing.assert_allclose(exact_grad, want_grad, rtol=1e-3, atol=1e-3)
    assert np.abs(exact_grad - st_grad).max() > 1.0  # the two really differ


def test_straight_through_head_trains_like_the_plain_cosine_head():
    """Gradients for embeddings and centres through MarginHead equal those of s*cos(theta) (no margin)."""
    from arcface.models.heads import MarginHead

    rng = np.random.default_rng(4)
    embeddings = tf.Variable(rng.normal(size=(8, 16)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 5, 8))
    upstream = tf.constant(rng.normal(size=(8, 5)).astype(np.float32))
    head = MarginHead(5, scale=64.0, m2=0.5, margin_gradient="straight_through")
    head.build([(8, 16), (8,)])

    def gradients(with_labels: bool):
        with tf.GradientTape() as tape:
            logits = head([embeddings, labels]) if with_labels else head(embeddings)
            loss = tf.reduce_sum(logits * upstream)
        return [g.numpy() for g in tape.gradient(loss, [embeddings, head.centers])]

    for margin, plain in zip(gradients(True), gradients(False), strict=True):
        np.testing.assert_allclose(margin, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="margin gradient"):
        margin_logits(tf.zeros([1, 2]), tf.constant([0]), 64.0, 1.0, 0.5, 0.0, gradient="approximate")
