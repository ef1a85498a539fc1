"""Faster kernels for the backbones' BatchNormalization and PReLU layers in training, the same maths.

Keras 3's BatchNormalization computes in float32 whatever the policy, out of a dozen elementwise ops (cast up,
mean, squared difference, mean, rsqrt, scale, shift, cast down) and twice as many in the backward pass; under
``mixed_bfloat16`` on a CPU those chains cost more than the convolutions around them. TensorFlow's
``FusedBatchNormV3`` (oneDNN's kernel on x86) does the same in one op forward and one backward, reading
bfloat16 and computing in float32. :func:`install` points the training-mode call of every BatchNormalization
layer of a model at it; inference (``training=False``), serialization and the weights are untouched, so a saved
or exported model is the same Keras model as before.

What stays exactly as Keras computes it: normalization by the biased batch variance, epsilon as given (the
``tf.compat.v1`` wrapper would raise it to 1.001e-5; the raw op is called instead), the moving statistics
``moving = moving * momentum + batch * (1 - momentum)`` with the *biased* variance (the fused op returns the
unbiased one, which is rescaled), and the output in the layer's compute dtype. Layers the fused kernel cannot
serve (a mask, synchronized statistics across replicas, renorm, an axis other than the last, rank other than 2
or 4) keep Keras' call.

PReLU: Keras computes ``relu(x) - alpha * relu(-x)``, five elementwise ops forward and twice as many backward
(two ReluGrads, the Negs, a Mul and a Sum for each side); in bfloat16 on a CPU they were 34 % of MobileFaceNet's
op time once BatchNorm was fused. :func:`fast_prelu` computes ``x * where(x > 0, 1, alpha)``, its gradient written
out: ``dy * where(x > 0, 1, alpha)`` (the scale the forward pass already made) and ``sum(dy * min(x, 0))`` over the
shared axes (TensorFlow sums bfloat16 in float32), seven ops in all. Unlike the BatchNorm kernel it serves
inference too (PReLU's ``call`` has no training argument), with the same values; a saved model is still Keras'
PReLU, its config and weights untouched.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf


def _fusable(layer: keras.layers.BatchNormalization, inputs, mask) -> bool:
    rank = len(inputs.shape)
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    return (mask is None and not layer.synchronized and not layer.renorm and rank in (2, 4)
            and axis in (-1, rank - 1))


def fused_batch_norm_training(layer: keras.layers.BatchNormalization, inputs) -> tf.Tensor:
    """``layer(inputs, training=True)`` through FusedBatchNormV3, updating the moving statistics as Keras does."""
    x = inputs
    if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
        x = tf.cast(x, tf.float32)
    shape = tf.shape(x)
    channels = x.shape[-1]
    if len(x.shape) == 2:
        x = tf.reshape(x, [-1, 1, 1, channels])
    gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels], tf.float32)
    beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels], tf.float32)
    empty = tf.constant([], tf.float32)
    y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=layer.epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    n = tf.cast(tf.size(x) // channels, tf.float32)
    variance = unbiased * ((n - 1.0) / n)  # the biased variance Keras' moving average takes
    momentum = layer.momentum
    layer.moving_mean.assign(tf.cast(layer.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(tf.cast(layer.moving_variance, tf.float32) * momentum
                                 + variance * (1.0 - momentum))
    if len(inputs.shape) == 2:
        y = tf.reshape(y, shape)
    return tf.cast(y, layer.compute_dtype)


def _batch_norm_call(self, inputs, training=None, mask=None):
    if training and self.trainable and _fusable(self, inputs, mask):
        return fused_batch_norm_training(self, inputs)
    return type(self).call(self, inputs, training=training, mask=mask)


def _sum_to_shape(gradient: tf.Tensor, shape: tf.TensorShape) -> tf.Tensor:
    """The gradient of a broadcast operand: summed over the axes it was broadcast along."""
    leading = len(gradient.shape) - len(shape)
    axes = list(range(leading)) + [leading + i for i, n in enumerate(shape) if n == 1]
    return tf.reshape(tf.reduce_sum(gradient, axis=axes), shape)


@tf.custom_gradient
def fast_prelu(x: tf.Tensor, alpha: tf.Tensor):
    """``max(x, 0) + alpha * min(x, 0)``, alpha broadcast against x (Keras' PReLU weight: x's shape without the
    batch axis, 1 along the shared axes)."""
    scale = tf.where(x > 0, tf.ones([], x.dtype), alpha)
    def gradient(dy):
        return dy * scale, _sum_to_shape(dy * tf.minimum(x, tf.zeros([], x.dtype)), alpha.shape)
    return x * scale, gradient


def _prelu_call(self, inputs):
    return fast_prelu(inputs, tf.cast(self.alpha, inputs.dtype))


def _layers(model: keras.Model, kind: type) -> list:
    found = []
    for layer in model.layers:
        if isinstance(layer, kind):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_layers(layer, kind))
    return found


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    return _layers(model, keras.layers.BatchNormalization)


def prelu_layers(model: keras.Model) -> list[keras.layers.PReLU]:
    """Every PReLU layer of ``model``, nested models included."""
    return _layers(model, keras.layers.PReLU)


def install(model, batch_norm: bool = True, prelu: bool = False) -> int:
    """Point the training-mode call of every BatchNormalization layer of ``model`` (nested models included) at
    :func:`fused_batch_norm_training`, and with ``prelu`` every PReLU's call at :func:`fast_prelu`; returns how many
    layers were changed. Only the instances change: class, config and weights do not, so saving, loading and
    exporting see Keras' layers."""
    changed = 0
    for wanted, layers, call in ((batch_norm, batch_norm_layers(model), _batch_norm_call),
                                 (prelu, prelu_layers(model), _prelu_call)):
        for layer in layers if wanted else ():
            layer.call = types.MethodType(call, layer)
            changed += 1
    return changed
