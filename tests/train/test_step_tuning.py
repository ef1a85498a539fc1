"""The tuned training step computes what the plain Keras one did: BatchNormalization through
FusedBatchNormV3 and PReLU through its written-out gradient against NumPy and Keras' kernels, the step's
SGD-momentum update with the coupled L2 decay against NumPy, and whole steps against the untuned ones."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from arcface import train as train_module
from arcface.models import fast_training
from arcface.train import MomentumSGD, Trainer
from tests.train.conftest import tiny_config


# ---------------------------------------------------------------------------------------------------------
# BatchNormalization through FusedBatchNormV3
# ---------------------------------------------------------------------------------------------------------
def numpy_batch_norm(x, gamma, beta, eps):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = ((x - mean) ** 2).mean(axes)  # biased, as Keras normalizes and averages
    return (x - mean) / np.sqrt(var + eps) * gamma + beta, mean, var


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 5)])
@pytest.mark.parametrize("scale", [True, False])
def test_fused_batch_norm_matches_numpy_and_keras(shape, scale):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    upstream = rng.normal(size=shape).astype(np.float32)
    layers = [keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, scale=scale) for _ in range(2)]
    for layer in layers:
        layer.build(shape)
        if scale:
            layer.gamma.assign(np.linspace(0.5, 2.0, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))
        layer.moving_mean.assign(np.full(shape[-1], 0.3))
        layer.moving_variance.assign(np.full(shape[-1], 1.7))
    keras_layer, fused_layer = layers
    assert fast_training.install(keras.Sequential([fused_layer])) == 1

    outputs, grads = [], []
    for layer in layers:
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(y * upstream)
        outputs.append(y.numpy())
        grads.append([g.numpy() for g in tape.gradient(loss, [xt, *layer.trainable_variables])])

    gamma = np.linspace(0.5, 2.0, shape[-1]) if scale else 1.0
    expected, mean, var = numpy_batch_norm(x.astype(np.float64), gamma, np.linspace(-1.0, 1.0, shape[-1]), 1e-5)
    np.testing.assert_allclose(outputs[1], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for fused, plain in zip(grads[1], grads[0], strict=True):
        np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused_layer.moving_mean.numpy(), 0.9 * 0.3 + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(fused_layer.moving_variance.numpy(), 0.9 * 1.7 + 0.1 * var, rtol=1e-5)
    # Inference (from moving statistics equal to round-off) and the saved form are Keras' own.
    np.testing.assert_allclose(fused_layer(x, training=False).numpy(), keras_layer(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert type(fused_layer) is keras.layers.BatchNormalization
    assert fused_layer.get_config()["name"] and "call" not in fused_layer.get_config()


def test_fused_batch_norm_in_bfloat16_reads_bfloat16_and_normalizes_in_float32():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 3.0, (8, 6, 6, 4)).astype(np.float32)
    layer = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype="mixed_bfloat16")
    layer.build(x.shape)
    fast_training.install(keras.Sequential([layer]))
    xb = tf.cast(x, tf.bfloat16)
    y = layer(xb, training=True)
    assert y.dtype == tf.bfloat16
    expected, mean, _ = numpy_batch_norm(xb.numpy().astype(np.float64), 1.0, 0.0, 1e-5)
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected, atol=2e-2, rtol=1e-2)  # bfloat16 output
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    assert layer.moving_mean.dtype == "float32"


def test_layers_the_fused_kernel_cannot_serve_keep_keras_call():
    layer = keras.layers.BatchNormalization(axis=1)  # not the channels-last axis
    fast_training.install(keras.Sequential([layer]))
    x = np.random.default_rng(2).normal(size=(4, 3, 5, 5)).astype(np.float32)
    reference = keras.layers.BatchNormalization(axis=1)
    np.testing.assert_allclose(layer(x, training=True).numpy(), reference(x, training=True).numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# PReLU with its gradient written out
# ---------------------------------------------------------------------------------------------------------
def numpy_prelu(x, alpha, upstream, reduce_axes):
    """y = max(x, 0) + alpha * min(x, 0); dy/dx = 1 where x > 0, else alpha; dL/dalpha = sum of upstream * min(x, 0)
    over the axes alpha is shared along (and the batch)."""
    y = np.maximum(x, 0) + alpha * np.minimum(x, 0)
    dx = upstream * np.where(x > 0, 1.0, alpha)
    dalpha = (upstream * np.minimum(x, 0)).sum(axis=reduce_axes, keepdims=True)[0]
    return y, dx, dalpha


@pytest.mark.parametrize(("shape", "shared_axes", "reduce_axes"),
                         [((4, 5, 6, 3), [1, 2], (0, 1, 2)), ((6, 4), None, (0,)), ((3, 4, 5, 2), [1], (0, 1))])
def test_fast_prelu_matches_numpy_and_keras(shape, shared_axes, reduce_axes):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(np.float32)
    upstream = rng.normal(size=shape).astype(np.float32)
    layers = [keras.layers.PReLU(shared_axes=shared_axes) for _ in range(2)]
    for layer in layers:
        layer.build(shape)
        # Slopes of both signs and above 1: the kernel must not rely on 0 <= alpha <= 1 (max(x, alpha * x) would).
        layer.alpha.assign(rng.uniform(-1.5, 1.5, layer.alpha.shape).astype(np.float32))
    keras_layer, fast_layer = layers
    fast_layer.alpha.assign(keras_layer.alpha.numpy())
    assert fast_training.install(keras.Sequential([fast_layer]), batch_norm=False, prelu=True) == 1

    results = []
    for layer in layers:
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(y * upstream)
        dx, dalpha = tape.gradient(loss, [xt, layer.alpha])
        results.append((y.numpy(), dx.numpy(), dalpha.numpy()))
    expected = numpy_prelu(x.astype(np.float64), keras_layer.alpha.numpy().astype(np.float64),
                           upstream.astype(np.float64), reduce_axes)
    for fast, plain, reference in zip(results[1], results[0], expected, strict=True):
        assert fast.shape == reference.shape
        np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
    assert type(fast_layer) is keras.layers.PReLU and "call" not in fast_layer.get_config()


def test_fast_prelu_in_bfloat16_keeps_the_dtype_and_sums_the_slope_gradient_in_float32():
    """A slope's gradient sums ~1e5 products in a real layer: summed in bfloat16 (8 significant bits) it would
    stall; TensorFlow's bfloat16 Sum accumulates in float32, which this checks on 200,704 equal terms."""
    layer = keras.layers.PReLU(shared_axes=[1, 2], dtype="mixed_bfloat16")
    shape = (32, 56, 56, 2)
    layer.build(shape)
    layer.alpha.assign(np.full(layer.alpha.shape, 0.25, np.float32))
    fast_training.install(keras.Sequential([layer]), batch_norm=False, prelu=True)
    x = -tf.ones(shape, tf.bfloat16)
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32))
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(y.numpy().astype(np.float32), -0.25, rtol=0)
    dalpha = tape.gradient(loss, layer.alpha)
    assert dalpha.dtype == tf.float32
    np.testing.assert_allclose(dalpha.numpy().ravel(), -32 * 56 * 56, rtol=1e-2)  # bfloat16's rounding of the sum


# ---------------------------------------------------------------------------------------------------------
# The step's update: SGD with momentum and the coupled L2 decay
# ---------------------------------------------------------------------------------------------------------
def numpy_sgd_momentum_l2(w, grads, lr, momentum, decay):
    """The reference: g' = g + decay * w; m = momentum * m - lr * g'; w += m (Keras' SGD with the L2 term)."""
    w, m = w.astype(np.float64), np.zeros_like(w, np.float64)
    for g in grads:
        m = momentum * m - lr * (g + decay * w)
        w = w + m
    return w


def test_fused_sgd_momentum_matches_numpy_and_keras_sgd():
    rng = np.random.default_rng(3)
    start = rng.normal(size=(5, 4)).astype(np.float32)
    grads = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(4)]
    results, slots = {}, {}
    for name, cls in (("keras", keras.optimizers.SGD), ("fused", MomentumSGD)):
        variable = keras.Variable(start, name="w")
        optimizer = cls(0.05, momentum=0.9)
        optimizer.build([variable])
        for g in grads:
            optimizer.apply([tf.constant(g)], [variable])
        results[name] = variable.numpy()
        slots[name] = [(v.name, v.numpy()) for v in optimizer.variables]
    # The same optimizer variables (a checkpoint of one restores into the other), holding the same values.
    assert [n for n, _ in slots["fused"]] == [n for n, _ in slots["keras"]]
    for (_, a), (_, b) in zip(slots["fused"], slots["keras"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(results["fused"], numpy_sgd_momentum_l2(start, grads, 0.05, 0.9, 0.0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(results["fused"], results["keras"], rtol=1e-6, atol=1e-6)


def test_the_training_step_decays_and_updates_as_numpy_says(tiny_manifest, tmp_path):
    """One step moves a decayed kernel by NumPy's SGD-momentum step with g + decay * w, g being the
    cross-entropy's gradient alone (taken on a copy of the model in the same state, on the same batch)."""
    from arcface import data

    images, labels = next(iter(data.make_dataset(tiny_manifest, "train", image_size=48, batch_size=8,
                                                 training=False)))
    trainer = Trainer(tiny_config(tmp_path / "run", decay=0.05, momentum=0.9, augment=False), tiny_manifest,
                      verbose=0)
    kernel = next(v for v in trainer.decayed if v.path.endswith("embedding_fc/kernel"))
    before = kernel.numpy()
    # The cross-entropy gradient alone, on a copy of the model in the same state (BN in training mode).
    clone = Trainer(tiny_config(tmp_path / "clone", decay=0.0, augment=False), tiny_manifest, verbose=0)
    clone.training_model.set_weights(trainer.training_model.get_weights())
    ce_kernel = next(v for v in clone.decayed if v.path.endswith("embedding_fc/kernel"))
    with tf.GradientTape() as tape:
        features = clone.backbone(images, training=True)
        logits = clone.head.logits(clone.head.cosine(features, None), labels)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    g = tape.gradient(ce, ce_kernel).numpy()
    lr = float(trainer.optimizer.learning_rate)
    trainer._train_step(images, labels)
    expected = numpy_sgd_momentum_l2(before, [g], lr, 0.9, 0.05)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("changes", [{}, {"backbone_clipnorm": 0.01}, {"sample_rate": 0.5}])
def test_tuned_step_updates_as_the_keras_step(tiny_manifest, tmp_path, monkeypatch, changes):
    """Steps with every tuning switch off (Keras' BatchNormalization kernels) and on: after one step the same loss,
    decay, weights and moving statistics to float32 round-off (the two sum in different orders). The kernel keeps
    no state but the moving statistics, which training mode does not read, so one step from the same weights is
    the whole comparison."""
    from arcface import data

    batches = list(data.make_dataset(tiny_manifest, "train", image_size=48, batch_size=8, training=False))[:3]
    runs = {}
    for tuned in (False, True):
        for switch in train_module.TUNING:
            monkeypatch.setattr(train_module, switch, tuned)
        trainer = Trainer(tiny_config(tmp_path / f"run{tuned}", decay=0.01, augment=False, **changes),
                          tiny_manifest, verbose=0)
        norms = fast_training.batch_norm_layers(trainer.training_model)
        prelus = fast_training.prelu_layers(trainer.training_model)
        assert norms and prelus and all(("call" in vars(la)) == tuned for la in norms + prelus)
        assert isinstance(trainer.optimizer, MomentumSGD) == tuned
        outputs, weights = [], []
        for images, labels in batches:
            outputs.append([float(x) for x in trainer._train_step(images, labels)])
            weights.append([w.numpy() for w in trainer.training_model.weights])
        runs[tuned] = outputs, weights
    (plain_out, plain_w), (tuned_out, tuned_w) = runs[False], runs[True]
    np.testing.assert_allclose(tuned_out[0], plain_out[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(tuned_w[0], plain_w[0], strict=True):  # a step moves a weight by ~1e-2; they agree to 1e-5
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Later steps start from weights that differ by that round-off, which a batch of 8 through BatchNorm and a
    # scale-16 head amplifies (the first conv kernel drifts apart by ~1e-2 in three steps): the losses still agree.
    np.testing.assert_allclose(tuned_out, plain_out, rtol=3e-3, atol=1e-6)
