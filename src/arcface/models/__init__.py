"""Backbone registry, margin heads and the two models built from one config."""

from __future__ import annotations

import keras
import tensorflow as tf

from arcface.models.backbones import available as available_backbones
from arcface.models.backbones import get_backbone
from arcface.models.heads import MarginHead, SoftmaxHead

__all__ = ["L2Normalize", "MarginHead", "SoftmaxHead", "available_backbones", "build_head", "build_models",
           "get_backbone", "CUSTOM_OBJECTS"]


@keras.saving.register_keras_serializable(package="arcface")
class L2Normalize(keras.layers.Layer):
    """Scales each embedding to unit length, so that a dot product is the cosine similarity.

    Always float32 (under a mixed policy too): the embedding every consumer reads is a float32 unit vector.
    """

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": "float32"})

    def call(self, x):
        return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


CUSTOM_OBJECTS = {"L2Normalize": L2Normalize, "MarginHead": MarginHead, "SoftmaxHead": SoftmaxHead}


def build_head(config, sharded_centers=None) -> keras.layers.Layer:
    if config.margin == "softmax":
        return SoftmaxHead(config.n_classes, name="head")
    m1, m2, m3 = config.margins
    return MarginHead(config.n_classes, scale=config.enhance, m1=m1, m2=m2, m3=m3,
                      easy_margin=config.easy_margin, sample_rate=config.sample_rate,
                      margin_gradient=config.margin_gradient, sharded_centers=sharded_centers, name="head")


def build_models(config, sharded_centers=None) -> tuple[keras.Model, keras.Model]:
    """(training model: [image, label] -> logits, embedding model: image -> unit-length embedding).

    Both share one backbone, so training the first trains the second; serving never needs a label.
    ``sharded_centers``: the margin head's centres split over the replicas (arcface.models.partial_fc).
    """
    kwargs = {"pretrained": True} if config.pretrained else {}
    backbone = get_backbone(config.backbone, image_size=config.image_size,
                            embedding_size=config.embedding_size, dropout=config.dropout, **kwargs)
    image = keras.Input((config.image_size, config.image_size, 3), name="image")
    label = keras.Input((), dtype="int32", name="label")
    features = backbone(image)
    logits = build_head(config, sharded_centers)([features, label])
    training_model = keras.Model([image, label], logits, name="arcface_training")
    embedding_model = keras.Model(image, L2Normalize(name="l2_normalize")(features), name="arcface_embedding")
    return training_model, embedding_model
