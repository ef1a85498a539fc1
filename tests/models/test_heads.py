"""Heads: NumPy reference of the full layer, Partial-FC sampling, serialization with safe mode."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from arcface.models import L2Normalize, MarginHead, SoftmaxHead
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
