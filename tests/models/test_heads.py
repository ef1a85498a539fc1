"""Heads: NumPy reference of the full layer, Partial-FC sampling, serialization with safe mode, float32 under a
mixed precision policy."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from arcface.config import TrainConfig
from arcface.models import L2Normalize, MarginHead, SoftmaxHead, build_models
from tests.models.test_margins import reference_target


def test_margin_head_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 16)).astype(np.float32)
    labels = rng.integers(0, 7, 6).astype(np.int32)
    head = MarginHead(7, scale=30.0, m1=1.0, m2=0.4, m3=0.1)
    logits = head([tf.constant(x), tf.constant(labels)]).numpy()
    w = head.centers.numpy()
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    want = 30.0 * cos
    want[np.arange(6), labels] = 30.0 * reference_target(cos[np.arange(6), labels], 1.0, 0.4, 0.1)
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-3)
    # Without labels (inference) the head gives plain scaled cosines.
    np.testing.assert_allclose(head(tf.constant(x)).numpy(), 30.0 * cos, rtol=1e-4, atol=1e-3)


def test_partial_fc_keeps_positives_and_renumbers_labels():
    head = MarginHead(100_000, sample_rate=0.1)
    head.build([(None, 8), (None,)])
    labels = tf.constant([3, 99_999, 3, 512, 0])
    index, remapped = head.sample_centers(labels)
    index, remapped = index.numpy(), remapped.numpy()
    assert len(set(index)) == len(index), "each sampled class appears once"
    # 10,000 draws with replacement from 100,000 classes collide about 500 times.
    assert 9_000 < len(index) <= 10_000 + 4
    assert {3, 99_999, 512, 0} <= set(index)
    np.testing.assert_array_equal(index[remapped], labels.numpy())


def test_partial_fc_sample_always_holds_every_positive():
    head = MarginHead(50, sample_rate=0.02)
    head.build([(None, 8), (None,)])
    labels = tf.range(20)
    index, remapped = head.sample_centers(labels)
    assert len(index.numpy()) <= 21
    np.testing.assert_array_equal(index.numpy()[remapped.numpy()], np.arange(20))


@pytest.mark.parametrize("layer", [
    MarginHead(5, scale=32.0, m1=1.2, m2=0.3, m3=0.1, easy_margin=True, sample_rate=0.5, name="head"),
    SoftmaxHead(5, name="head"),
])
def test_head_config_round_trip_and_keras_file(tmp_path, layer):
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    clone = keras.saving.deserialize_keras_object(config)
    assert clone.get_config() == layer.get_config()

    emb = keras.Input((8,))
    label = keras.Input((), dtype="int32")
    model = keras.Model([emb, label], layer([emb, label]))
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3], np.int32)
    path = tmp_path / "head.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded([x, y]).numpy(), model([x, y]).numpy(), rtol=1e-6)
    assert len(reloaded.weights) == len(model.weights)


def test_l2_normalize_gives_unit_vectors():
    out = L2Normalize()(tf.constant([[3.0, 4.0], [0.0, 2.0]])).numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Under mixed_bfloat16 the backbone computes in bfloat16; the head, the normalisation and the logits stay float32.
# ---------------------------------------------------------------------------------------------------
#: bfloat16 keeps 8 significant bits (7 stored and the implicit one): rounding to nearest moves a value by at
#: most 2^-8 of itself.
BF16_UNIT_ROUNDOFF = 2.0 ** -8


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("margin", ["arcface", "softmax"])
def test_heads_and_normalization_stay_float32_under_mixed_bfloat16(mixed_bfloat16, margin):
    config = TrainConfig(n_classes=5, backbone="TinyFaceNet", image_size=32, embedding_size=16, margin=margin)
    training_model, embedding_model = build_models(config)
    backbone, head = training_model.get_layer("TinyFaceNet"), training_model.get_layer("head")
    assert backbone.compute_dtype == "bfloat16", "the policy does reach the backbone"
    assert head.compute_dtype == "float32" and all(w.dtype == "float32" for w in head.weights)
    if margin == "softmax":
        assert head.dense.compute_dtype == "float32"
    assert embedding_model.get_layer("l2_normalize").compute_dtype == "float32"

    images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    labels = np.array([0, 1, 4], np.int32)
    assert backbone(images).dtype == tf.bfloat16
    assert training_model([images, labels]).dtype == tf.float32
    embeddings = embedding_model(images)
    assert embeddings.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings.numpy(), axis=1), 1.0, rtol=1e-6)


def arcface_reference(embeddings, centers, labels, scale, m):
    """s*cos(theta_j) for every class and s*cos(theta_y + m) for the label, in float64 (NumPy)."""
    e = np.asarray(embeddings, np.float64)
    c = np.asarray(centers, np.float64)
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
    rows = np.arange(len(labels))
    logits = scale * cos
    logits[rows, labels] = scale * reference_target(cos[rows, labels], 1.0, m, 0.0)
    return logits, cos


def test_margin_logits_under_mixed_bfloat16_match_a_float32_reference(mixed_bfloat16):
    rng = np.random.default_rng(3)
    n, d_in, d, classes, s, m = 16, 64, 32, 10, 64.0, 0.5
    # Inputs and weights that bfloat16 holds exactly, so that the only rounding of the backbone is that of its
    # output: the products of two bfloat16 numbers are exact in float32, and float32 sums them.
    x = tf.cast(tf.cast(rng.normal(size=(n, d_in)), tf.bfloat16), tf.float32).numpy()
    labels = rng.integers(0, classes, n).astype(np.int32)
    backbone = keras.layers.Dense(d, use_bias=False, name="backbone")
    backbone.build((None, d_in))
    w = tf.cast(tf.cast(backbone.kernel, tf.bfloat16), tf.float32).numpy()
    backbone.kernel.assign(w)
    head = MarginHead(classes, scale=s, m2=m)

    features = backbone(x)
    assert features.dtype == tf.bfloat16
    logits = head([features, tf.constant(labels)])
    assert logits.dtype == tf.float32
    logits = logits.numpy()
    centers = head.centers.numpy()

    # 1. The head is float32: from the backbone's own bfloat16 output, it gives the float64 reference up to
    # float32 rounding (a bfloat16 head would be off by about s * 2^-8 = 0.25).
    from_features, _ = arcface_reference(features.numpy().astype(np.float64), centers, labels, s, m)
    np.testing.assert_allclose(logits, from_features, rtol=0, atol=1e-3)

    # 2. Against the float32 model (NumPy, float32 backbone): each embedding component is rounded once to
    # bfloat16 (at most 2^-8 of itself) plus the float32 sum's error (d_in * 2^-24 of sum|x||w|), so the
    # embedding moves by eps <= that norm over |e|, its direction and every cosine by at most 2*eps. The other
    # classes' logits s*cos move by at most s*2*eps; the label's s*cos(theta + m) = s*f(cos) by at most
    # s*2*eps*max|f'| with f'(c) = cos m + c sin m / sqrt(1 - c^2), largest at the far end of the interval.
    e = x @ w
    rounding = BF16_UNIT_ROUNDOFF * np.abs(e) * (1 + BF16_UNIT_ROUNDOFF) + d_in * 2.0 ** -24 * (np.abs(x) @ np.abs(w))
    eps = np.linalg.norm(rounding, axis=1) / np.linalg.norm(e, axis=1)
    want, cos = arcface_reference(e.astype(np.float32).astype(np.float64), centers, labels, s, m)
    rows = np.arange(n)
    reach = np.abs(cos[rows, labels]) + 2 * eps
    assert reach.max() < 0.8, "the labels' cosines stay away from +-1 and from the fallback below cos(pi - m)"
    slope = np.ones_like(logits)
    slope[rows, labels] = math.cos(m) + reach * math.sin(m) / np.sqrt(1 - reach**2)
    tolerance = s * 2 * eps[:, None] * slope + 1e-3
    error = np.abs(logits - want)
    assert np.all(error <= tolerance), f"worst excess {np.max(error - tolerance):.4g}"
    assert tolerance.max() < s * 8 * BF16_UNIT_ROUNDOFF, "a bound of a few bfloat16 steps, not a vacuous one"
    assert error.max() > 0, "the backbone did round to bfloat16"
