"""Face backbones by name: image (normalized to (x - 127.5) / 128) -> embedding (not yet L2-normalized).

``get_backbone("ResNet50", image_size=112, embedding_size=512)`` returns a functional ``keras.Model``. New
backbones register themselves with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register(name: str):
    def wrap(builder):
        _REGISTRY[name] = builder
        return builder

    return wrap


def available() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backbone(name: str, image_size: int = 112, embedding_size: int = 512, dropout: float = 0.0,
                 **kwargs) -> keras.Model:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](image_size=image_size, embedding_size=embedding_size, dropout=dropout, **kwargs)


def embedding_head(x, embedding_size: int, dropout: float, name: str = "embedding"):
    """BN - Dropout - Flatten - FC - BN: the "option E" output of the ArcFace paper (section 3.2)."""
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn_in")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(embedding_size, name=f"{name}_fc")(x)
    # The final BN has a fixed unit scale, as in insightface (features.weight frozen at 1).
    return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, scale=False, name=name)(x)


# --------------------------------------------------------------------------------------------------
# IResNet: the improved residual networks of the ArcFace paper (LResNetE-IR), as in insightface.
# --------------------------------------------------------------------------------------------------
IRESNET_DEPTHS = {"ResNet18": (2, 2, 2, 2), "ResNet34": (3, 4, 6, 3), "ResNet50": (3, 4, 14, 3),
                  "ResNet100": (3, 13, 30, 3)}


# PReLU's negative slope starts at 0.25 (He et al. 2015, and PyTorch's nn.PReLU that insightface's backbones
# use), not at Keras's 0: a slope of 0 is a ReLU, and through MobileFaceNet's ~50 BN-ReLU layers a random network
# keeps so little of its input that same-identity faces are not yet close. On the LFW probe split, the
# nearest-class-mean accuracy of untrained embeddings is 2.6 % with 0 and 8.8 % with 0.25, and training leaves
# ArcFace's s=64 plateau far sooner (benchmarks/probe_convergence.py, README "Margin convergence").
PRELU_INIT = 0.25


def _prelu(name, slope: float = PRELU_INIT):
    return layers.PReLU(alpha_initializer=keras.initializers.Constant(slope), shared_axes=[1, 2], name=name)


def _conv(filters, kernel, stride, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)


def _ir_block(x, filters: int, stride: int, name: str, torch_padding: bool = False):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus a projected shortcut when the shape changes.

    ``torch_padding``: the strided conv pads one pixel on every side, as PyTorch's (and so insightface's
    published models) do; Keras' "same" pads 0 before and 1 after on an even input, one pixel off the grid."""
    shortcut = x
    y = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn1")(x)
    y = _conv(filters, 3, 1, f"{name}_conv1")(y)
    y = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn2")(y)
    y = _prelu(f"{name}_prelu")(y)
    if torch_padding and stride != 1:
        y = layers.ZeroPadding2D(1, name=f"{name}_pad")(y)
        y = layers.Conv2D(filters, 3, strides=stride, padding="valid", use_bias=False, name=f"{name}_conv2")(y)
    else:
        y = _conv(filters, 3, stride, f"{name}_conv2")(y)
    y = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn3")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride, f"{name}_down_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_down_bn")(shortcut)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def _iresnet(name: str, image_size: int, embedding_size: int, dropout: float, width: int = 64,
             depths: str | None = None, torch_padding: bool = False) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv(width, 3, 1, "stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="stem_bn")(x)
    x = _prelu("stem_prelu")(x)
    for stage, blocks in enumerate(IRESNET_DEPTHS[depths or name]):
        filters = width * 2**stage
        for block in range(blocks):
            x = _ir_block(x, filters, 2 if block == 0 else 1, f"stage{stage + 1}_block{block + 1}", torch_padding)
    return keras.Model(inputs, embedding_head(x, embedding_size, dropout), name=name)


#: insightface's IResNets exactly (PyTorch's padding): what `arcface import` builds from a published model, so
#: that a run started from one (--backbone IResNet50 --init_from DIR) starts from the very same network.
INSIGHTFACE_IRESNETS = {f"I{name}": name for name in IRESNET_DEPTHS}

for _name in IRESNET_DEPTHS:
    register(_name)(lambda n=_name, **kw: _iresnet(n, **kw))
for _name, _depths in INSIGHTFACE_IRESNETS.items():
    register(_name)(lambda n=_name, d=_depths, **kw: _iresnet(n, depths=d, torch_padding=True, **kw))


# --------------------------------------------------------------------------------------------------
# MobileFaceNet (Chen et al., 2018, arXiv 1804.07573, table 1).
# --------------------------------------------------------------------------------------------------
MOBILEFACENET_BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _conv_bn(x, filters, kernel, stride, name, activation=True, depthwise=False, padding="same", slope=PRELU_INIT):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=f"{name}_dw")(x)
    else:
        x = _conv(filters, kernel, stride, f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_bn")(x)
    return _prelu(f"{name}_prelu", slope)(x) if activation else x


def _bottleneck(x, expansion, filters, stride, name):
    y = _conv_bn(x, x.shape[-1] * expansion, 1, 1, f"{name}_expand")
    y = _conv_bn(y, None, 3, stride, f"{name}_depthwise", depthwise=True)
    y = _conv_bn(y, filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


@register("MobileFaceNet")
def mobilefacenet(image_size: int, embedding_size: int, dropout: float = 0.0) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn(inputs, 64, 3, 2, "stem")
    x = _conv_bn(x, None, 3, 1, "stem_depthwise", depthwise=True)
    for i, (t, c, n, s) in enumerate(MOBILEFACENET_BOTTLENECKS):
        for j in range(n):
            x = _bottleneck(x, t, c, s if j == 0 else 1, f"bottleneck{i + 1}_{j + 1}")
    x = _conv_bn(x, 512, 1, 1, "conv_last")
    # Global depthwise conv: a learned, position-aware pooling of the whole final feature map.
    x = _conv_bn(x, None, tuple(x.shape[1:3]), 1, "gdconv", activation=False, depthwise=True, padding="valid")
    x = layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="embedding_dropout")(x)
    x = layers.Dense(embedding_size, use_bias=False, name="embedding_fc")(x)
    outputs = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="embedding")(x)
    return keras.Model(inputs, outputs, name="MobileFaceNet")


# --------------------------------------------------------------------------------------------------
# VGG16: the Keras application's convolutional part with the face embedding head.
# --------------------------------------------------------------------------------------------------
@register("VGG16")
def vgg16(image_size: int, embedding_size: int, dropout: float = 0.0, pretrained: bool = False) -> keras.Model:
    base = keras.applications.VGG16(include_top=False, weights="imagenet" if pretrained else None,
                                    input_shape=(image_size, image_size, 3))
    return keras.Model(base.input, embedding_head(base.output, embedding_size, dropout), name="VGG16")


# --------------------------------------------------------------------------------------------------
# TinyFaceNet: four small conv stages, for tests and quick CPU smoke runs (not for accuracy).
# --------------------------------------------------------------------------------------------------
@register("TinyFaceNet")
def tinyfacenet(image_size: int, embedding_size: int, dropout: float = 0.0, width: int = 16) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for stage in range(4):
        # Four layers do not wash out the input, and the tests' short runs were tuned with a ReLU start.
        x = _conv_bn(x, width * 2**stage, 3, 2, f"stage{stage + 1}", slope=0.0)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="embedding_dropout")(x)
    x = layers.Dense(embedding_size, name="embedding_fc")(x)
    outputs = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, scale=False, name="embedding")(x)
    return keras.Model(inputs, outputs, name="TinyFaceNet")
