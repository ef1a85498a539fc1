"""Classification heads that sit on the embedding during training (and are dropped for serving)."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from arcface.models.margins import margin_logits
from arcface.models.partial_fc import ShardedVariable, assign_full


@keras.saving.register_keras_serializable(package="arcface")
class MarginHead(keras.layers.Layer):
    """Normalized class centres with a combined angular margin on the true class.

    logits = s * cos(m1*theta_y + m2) - s*m3 for the label y, s * cos(theta_j) for every other class, where
    theta_j is the angle between the embedding and the centre of class j.

    Args:
        n_classes: number of identities.
        scale: s, the radius of the hypersphere the logits live on (ArcFace uses 64).
        m1, m2, m3: multiplicative angular, additive angular and additive cosine margins.
        easy_margin: apply the margin only where cos(theta) > 0 instead of the monotonic fallback.
        sample_rate: Partial-FC; fraction of class centres a training step looks at (1.0 = all).
        margin_gradient: "exact", or "straight_through": the margin's value with the plain cosine's gradient
            (insightface's CombinedMarginLoss); see arcface.models.margins.
        sharded_centers: Partial-FC across replicas: the centres as rows split over the replicas' devices
            (``arcface.models.partial_fc.sharded_centers``), used instead of a weight of the layer. Not part of
            the config: the head saves, and loads, as an ordinary one with the whole [n_classes, dim] matrix.

    Call arguments:
        inputs: ``[embeddings, labels]`` (labels may be omitted at inference, which gives s*cos(theta)).

    Example:
        >>> head = MarginHead(10, scale=64.0, m2=0.5)
        >>> logits = head([tf.random.normal([4, 512]), tf.constant([0, 1, 2, 3])])

    The head computes in float32 under any precision policy (its ``dtype`` is always float32): the embedding
    is cast up on the way in, and the cosines, the margin and the logits the loss reads are float32, so a
    mixed_bfloat16 or mixed_float16 backbone rounds only its own output.

    Reference: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    """

    def __init__(self, n_classes: int, scale: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 easy_margin: bool = False, sample_rate: float = 1.0, margin_gradient: str = "exact",
                 sharded_centers: ShardedVariable | None = None, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})
        if sharded_centers is not None:
            # Not a Keras weight (Keras would make it one matrix), and under this one name only: a checkpoint
            # keys it as it keys the unsharded weight, `centers`.
            self.centers = sharded_centers
        self.n_classes = int(n_classes)
        self.scale = float(scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.easy_margin = bool(easy_margin)
        self.sample_rate = float(sample_rate)
        self.margin_gradient = str(margin_gradient)

    def build(self, input_shape):
        embedding_shape = input_shape[0] if isinstance(input_shape, list | tuple) and isinstance(
            input_shape[0], list | tuple) else input_shape
        if self.sharded:
            want = (self.n_classes, int(embedding_shape[-1]))
            if tuple(self.centers.shape) != want:
                raise ValueError(f"sharded centres of shape {tuple(self.centers.shape)}, not {want}")
            return
        # Rows are class centres so that Partial-FC can gather a sample of them without a transpose.
        self.centers = self.add_weight(name="centers", shape=(self.n_classes, int(embedding_shape[-1])),
                                       initializer=keras.initializers.RandomNormal(stddev=0.01),
                                       dtype="float32")

    @property
    def sharded(self) -> bool:
        return isinstance(getattr(self, "centers", None), ShardedVariable)

    def cosine(self, embeddings: tf.Tensor, centers: tf.Tensor | None = None) -> tf.Tensor:
        if centers is None and self.sharded:
            # Shard by shard on the shard's device: no device ever holds the whole matrix.
            parts = []
            for shard in self.centers.variables:
                with tf.device(shard.device):
                    parts.append(self.cosine(embeddings, shard))
            return tf.concat(parts, axis=-1)
        centers = tf.cast(self.centers if centers is None else centers, tf.float32)
        x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
        # Dividing the [batch, classes] product by the centre norms, instead of normalizing the [classes, dim]
        # matrix first, saves two passes over the largest tensor of the model (Partial-FC's sampled centres).
        norms = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(centers), axis=-1), 1e-12))
        return tf.matmul(x, centers, transpose_b=True) / norms

    def logits(self, cos_theta: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return margin_logits(cos_theta, labels, self.scale, self.m1, self.m2, self.m3, self.easy_margin,
                             self.margin_gradient)

    def sample_centers(self, labels: tf.Tensor):
        """Partial-FC: every class in the batch plus about ``sample_rate * n_classes`` random other classes.

        Returns the sampled class indices and the labels re-numbered into that sample. Negatives are drawn with
        replacement and de-duplicated, so the work is proportional to the sample, never to ``n_classes``; the
        sample is a few per cent smaller than asked when draws collide, which Partial-FC does not mind.
        """
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        num_sample = max(1, int(math.ceil(self.sample_rate * self.n_classes)))
        negatives = tf.random.uniform([num_sample], maxval=self.n_classes, dtype=tf.int32)
        index, position = tf.unique(tf.concat([labels, negatives], axis=0))
        return index, position[: tf.size(labels)]

    def call(self, inputs):
        if isinstance(inputs, list | tuple):
            embeddings, labels = inputs if len(inputs) == 2 else (inputs[0], None)
        else:
            embeddings, labels = inputs, None
        cos_theta = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos_theta
        return self.logits(cos_theta, labels)

    def compute_output_shape(self, input_shape):
        embedding_shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        return (embedding_shape[0], self.n_classes)

    # Sharded centres are no Keras weight: these four give and take the whole matrix, as an unsharded head does.
    def get_weights(self):
        return [self.centers.numpy()] if self.sharded else super().get_weights()

    def set_weights(self, weights):
        if not self.sharded:
            return super().set_weights(weights)
        if len(weights) != 1:
            raise ValueError(f"a MarginHead holds one weight (its centres), not {len(weights)}")
        assign_full(self.centers, np.asarray(weights[0]))

    def save_own_variables(self, store):
        if not self.sharded:
            return super().save_own_variables(store)
        store["0"] = self.centers.numpy()

    def load_own_variables(self, store):
        if not self.sharded:
            return super().load_own_variables(store)
        self.set_weights([store["0"]])

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes, "scale": self.scale, "m1": self.m1,
                "m2": self.m2, "m3": self.m3, "easy_margin": self.easy_margin, "sample_rate": self.sample_rate,
                "margin_gradient": self.margin_gradient}


@keras.saving.register_keras_serializable(package="arcface")
class SoftmaxHead(keras.layers.Layer):
    """A plain fully connected softmax classifier (W x + b), the baseline that ArcFace improves on.

    Args:
        n_classes: number of identities.

    Call arguments:
        inputs: ``[embeddings, labels]`` or ``embeddings``; the labels are ignored.

    Like :class:`MarginHead`, it computes in float32 under any precision policy.
    """

    def __init__(self, n_classes: int, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})
        self.n_classes = int(n_classes)
        self.sample_rate = 1.0

    def build(self, input_shape):
        embedding_shape = input_shape[0] if isinstance(input_shape, list | tuple) and isinstance(
            input_shape[0], list | tuple) else input_shape
        self.dense = keras.layers.Dense(self.n_classes, name="classifier", dtype="float32")
        self.dense.build(tuple(embedding_shape))

    def call(self, inputs):
        embeddings = inputs[0] if isinstance(inputs, list | tuple) else inputs
        return self.dense(embeddings)

    def compute_output_shape(self, input_shape):
        embedding_shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        return (embedding_shape[0], self.n_classes)

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}
