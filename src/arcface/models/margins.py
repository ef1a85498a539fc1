"""The combined angular margin: target logit cos(m1*theta + m2) - m3.

ArcFace (m1=1, m2=m, m3=0, arXiv 1801.07698), CosFace (m1=1, m2=0, m3=m) and SphereFace-style (m1=m, m2=0,
m3=0) margins are all this one function, as in insightface's ``CombinedMarginLoss``.

Its gradient comes in two kinds (``margin_gradient``): ``exact``, the derivative of s*cos(m1*theta + m2) - s*m3,
and ``straight_through``, the forward value of the margin with the gradient of the plain s*cos(theta), which is
what ``CombinedMarginLoss`` computes: it rewrites the logits in place under ``torch.no_grad()``, so autograd
sees only the cosine.
"""

from __future__ import annotations

import math

import tensorflow as tf

from arcface.config import MARGIN_GRADIENTS as GRADIENTS

# acos has an infinite derivative at +-1; keeping cos inside (-1, 1) by this much bounds it (at ~2.2e3 in
# float32) and keeps both value and gradient finite for perfectly aligned or opposite vectors.
COS_EPS = 1e-6


def combined_margin_target(cos_theta: tf.Tensor, m1: float, m2: float, m3: float,
                           easy_margin: bool = False) -> tf.Tensor:
    """Target-class cosine after the margin, monotonically decreasing in theta on [0, pi].

    When m1*theta + m2 passes pi, cos() would turn back up and reward a worse angle. With an additive angular
    margin (m2 > 0) the usual fallback cos(theta) - m2*sin(m2) - m3 is used there (insightface's ``th``/``mm``);
    ``easy_margin`` instead applies the margin only where cos(theta) > 0. Without m2, the SphereFace
    piecewise psi(theta) = (-1)^k cos(m1*theta) - 2k keeps monotonicity for any m1.
    """
    cos_theta = tf.cast(cos_theta, tf.float32)
    if m1 == 1.0 and m2 == 0.0:
        return cos_theta - m3
    clipped = tf.clip_by_value(cos_theta, -1.0 + COS_EPS, 1.0 - COS_EPS)
    theta = tf.acos(clipped)
    angle = m1 * theta + m2
    if m2 > 0.0:
        target = tf.cos(angle) - m3
        if easy_margin:
            return tf.where(cos_theta > 0.0, target, cos_theta - m3)
        fallback = cos_theta - m2 * math.sin(m2) - m3
        return tf.where(angle <= math.pi, target, fallback)
    k = tf.floor(angle / math.pi)
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(angle) - 2.0 * k - m3


def margin_logits(cos_theta: tf.Tensor, labels: tf.Tensor, scale: float, m1: float, m2: float, m3: float,
                  easy_margin: bool = False, gradient: str = "exact") -> tf.Tensor:
    """s * (margin target for the true class, cos(theta) for every other class).

    ``gradient="straight_through"``: the same values, differentiated as if the margin were not there.
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"margin gradient {gradient!r} is unknown; use one of {', '.join(GRADIENTS)}")
    cos_theta = tf.cast(cos_theta, tf.float32)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    one_hot = tf.equal(tf.range(tf.shape(cos_theta)[-1])[None, :], labels[:, None])
    target = combined_margin_target(cos_theta, m1, m2, m3, easy_margin)
    if gradient == "straight_through":
        target = cos_theta + tf.stop_gradient(target - cos_theta)
    return scale * tf.where(one_hot, target, cos_theta)
