"""insightface's published recognition models as a model folder of this project: ``arcface import``.

``arcface import w600k_r50.onnx --save_path DIR`` reads an arcface_torch IResNet (iresnet18/34/50/100) exported to
ONNX -- the recognition model of insightface's model packs, e.g. buffalo_l's ``w600k_r50.onnx`` -- maps its
weights onto the layers of :mod:`arcface.models.backbones`' IResNet, checks the result against onnxruntime running
the file, and writes what a training run writes into its save_path (``embedding_model.keras``, ``config.yaml``,
``metadata.json``). ``arcface embed/compare/evaluate/export/serve`` take that folder, and ``arcface train
--init_from DIR`` fine-tunes it.

Why our own layers and not a generic ONNX-to-TensorFlow converter (onnx2tf, onnx-tf): those give a frozen graph
of anonymous ops, which neither trains nor goes through this project's export, serving and warm-start paths.

The mapping (each step exact; :func:`import_onnx` measures it):

* Conv kernels: ONNX ``[out, in, kh, kw]`` (NCHW) -> Keras ``[kh, kw, in, out]`` (NHWC). The FC reads PyTorch's
  flatten of ``[C, H, W]``; Keras flattens ``[H, W, C]``, so the FC's rows are permuted the same way.
* BatchNorm: PyTorch's eval-mode export folds a BN that follows a conv into that conv (the Conv gets a bias). Our
  layers keep conv and BN apart, so that BN becomes the identity plus the bias (gamma 1, beta = bias, mean 0,
  variance 1 - epsilon); with ``--calibration_images`` it gets the statistics of its input on faces instead, for
  fine-tuning (:func:`calibrate`). A BN that comes before a conv (each block's bn1, the head's bn2) and the
  embedding's BatchNorm1d stay BatchNormalization nodes and map one to one.
* Input: insightface feeds RGB ``(x - 127.5) / 127.5``; every entrance of this project feeds ``(x - 127.5) / 128``
  (:data:`arcface.artifacts.NORMALIZATION`, the one constant all of them use; metadata.json only describes it).
  So the factor 128 / 127.5 goes into the stem conv's kernel. Exact: the conv is linear, and its zero padding is 0
  in both normalisations (pixel 127.5).
* Padding: PyTorch pads a 3x3 stride-2 conv by one pixel on every side; Keras' 'same' pads an input of even size
  by 0 before and 1 after, which samples a grid one pixel off (and off the 1x1 shortcut's grid). The imported
  network pads explicitly (ZeroPadding2D, then a 'valid' conv); otherwise it is the project's IResNet layer for
  layer (same names, same weight order), so its weights also load into ``--backbone ResNet50``.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from arcface import __version__
from arcface.artifacts import NORMALIZATION, file_sha256, save_keras, write_json
from arcface.config import TrainConfig
from arcface.contracts import ModelDir
from arcface.data.align import TEMPLATE_NAME
from arcface.data.preprocess import face_pixels, normalize
from arcface.embedding import IMAGE_SUFFIXES
from arcface.models import L2Normalize, get_backbone
from arcface.models.backbones import INSIGHTFACE_IRESNETS, IRESNET_DEPTHS

#: insightface's recognition input (model_zoo/arcface_onnx.py: blobFromImages(1/std, mean, swapRB=True)): RGB.
INSIGHTFACE_MEAN = 127.5
INSIGHTFACE_STD = 127.5
BN_EPSILON = 1e-5  # every BatchNormalization layer of backbones.py
STAGE_WIDTHS = (64, 128, 256, 512)  # arcface_torch's layer1..layer4, backbones' IResNet with width=64
# In an inference graph these nodes pass their input through unchanged.
PASS_THROUGH = ("Identity", "Dropout")
PARITY_MIN_COSINE = 0.9999
PARITY_MAX_ABS = 1e-4
CHECK_IMAGES = 4
MIN_CALIBRATION_IMAGES = 16
LICENSE_NOTE = ("insightface's pretrained models are for non-commercial research use only (insightface's model "
                "zoo terms); this model is derived from one")
SOURCE_ARCHITECTURE = "insightface arcface_torch IResNet exported to ONNX"

_FIX = ("`arcface import` reads arcface_torch's IResNets (iresnet18/34/50/100) exported to ONNX: a recognition "
        "model of insightface's model zoo such as buffalo_l's w600k_r50.onnx, or a backbone.pth converted with "
        "arcface_torch's torch2onnx.py; for another architecture, train one of this project's backbones "
        "(`arcface train --backbone ...`)")
_MOBILEFACENET = ("this looks like insightface's MobileFaceNet (w600k_mbf.onnx: a 128-channel stride-2 stem, grouped "
                  "3x3 convs, blocks (1, 4, 6, 2)), whose layout differs from this project's MobileFaceNet (Chen et "
                  "al. 2018, table 1: a 64-channel stem and other bottlenecks), so its weights have no place to go; "
                  "import an IResNet model instead (buffalo_l's w600k_r50.onnx), or train `--backbone "
                  "MobileFaceNet` here")


class InsightfaceImportError(ValueError):
    """The source file cannot be imported, or the model folder cannot be written; the message says why and what
    to do."""


@dataclasses.dataclass(frozen=True)
class ImportResult:
    save_path: str
    backbone: str
    image_size: int
    embedding_size: int
    parity: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# What the ONNX graph holds, in our layers' terms (NHWC kernels, BN as gamma, beta, mean, variance at eps 1e-5)
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConvBN:
    kernel: np.ndarray  # [kh, kw, in, out]
    bn: tuple[np.ndarray, ...]  # gamma, beta, moving mean, moving variance
    stride: int
    output: str = ""  # the graph tensor the next layer reads
    folded: bool = False  # the export folded the BN into the conv: ours starts as the identity plus the bias


@dataclasses.dataclass
class Block:
    bn1: tuple[np.ndarray, ...]
    conv1: ConvBN
    slope: np.ndarray  # PReLU, one per channel
    conv2: ConvBN
    down: ConvBN | None

    @property
    def filters(self) -> int:
        return int(self.conv1.kernel.shape[-1])


@dataclasses.dataclass
class IResNetWeights:
    stem: ConvBN
    stem_slope: np.ndarray
    blocks: list[Block]
    bn2: tuple[np.ndarray, ...]
    fc_kernel: np.ndarray  # [H * W * C, embedding] in Keras' flatten order
    fc_bias: np.ndarray
    features: tuple[np.ndarray, ...]  # the final BN without a scale: beta, moving mean, moving variance
    image_size: int
    depths: tuple[int, ...]
    backbone: str

    @property
    def embedding_size(self) -> int:
        return int(self.fc_kernel.shape[1])


def _identity_bn(bias: np.ndarray) -> tuple[np.ndarray, ...]:
    """Our BN after a conv whose own BN the export folded in: x + bias, exactly (1 - eps + eps == 1)."""
    n = bias.shape[0]
    return (np.ones(n, np.float32), bias.astype(np.float32), np.zeros(n, np.float32),
            np.full(n, 1.0 - BN_EPSILON, np.float32))


# ---------------------------------------------------------------------------------------------------------
# Reading the graph
# ---------------------------------------------------------------------------------------------------------
class _Graph:
    """An ONNX graph seen through its data flow: who reads a tensor, what constant a name holds."""

    def __init__(self, model, source: str):
        from onnx import numpy_helper

        graph = model.graph
        self.source = source
        self.values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {out: node for node in graph.node for out in node.output}
        # Identity/Dropout outputs are their input under another name: every edge is keyed by the original.
        self.alias: dict[str, str] = {}
        for node in graph.node:
            if node.op_type in PASS_THROUGH and node.input:
                self.alias[node.output[0]] = self.name(node.input[0])
        self.readers_of: dict[str, list] = defaultdict(list)
        for node in graph.node:
            if node.op_type in PASS_THROUGH or node.op_type == "Constant":
                continue
            for name in dict.fromkeys(self.name(i) for i in node.input if i):
                self.readers_of[name].append(node)
        self.inputs = [i for i in graph.input if i.name not in self.values]
        self.outputs = {self.name(o.name) for o in graph.output}

    def name(self, tensor: str) -> str:
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    def readers(self, tensor: str) -> list:
        return self.readers_of.get(self.name(tensor), [])

    def value(self, tensor: str, what: str) -> np.ndarray:
        """The constant ``tensor`` holds: an initializer, a Constant, or one reshaped by Unsqueeze/Reshape."""
        tensor = self.name(tensor)
        if tensor in self.values:
            return self.values[tensor]
        node = self.producer.get(tensor)
        if node is not None and node.op_type in ("Unsqueeze", "Reshape", "Squeeze") and node.input:
            return self.value(node.input[0], what)
        raise self.error(f"{what} as a constant (an initializer)", f"a value computed at run time ({tensor!r})")

    def only_reader(self, tensor: str, expected: str, ops: tuple[str, ...]):
        readers = self.readers(tensor)
        if len(readers) != 1 or readers[0].op_type not in ops:
            found = (", ".join(describe(n) for n in readers) if readers else
                     f"the graph's end (output {tensor!r})" if self.name(tensor) in self.outputs else "nothing")
            raise self.error(expected, found)
        return readers[0]

    def error(self, expected: str, found: str, fix: str = _FIX) -> InsightfaceImportError:
        return InsightfaceImportError(f"{self.source} is not an insightface IResNet that `arcface import` can map: "
                                      f"expected {expected}, found {found}. {fix}")


def describe(node) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"an unnamed {node.op_type} node"


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _bn(g: _Graph, node, channels: int, where: str, shift: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """A BatchNormalization node as our layer's (gamma, beta, mean, variance) at epsilon 1e-5; ``shift`` is the
    bias of the conv before it (a conv with a bias followed by a BN: the bias moves into the mean)."""
    gamma, beta, mean, var = (g.value(node.input[i], f"{where}'s BatchNormalization parameters").astype(np.float64)
                              for i in range(1, 5))
    if gamma.shape != (channels,):
        raise g.error(f"{where}'s BatchNormalization over {channels} channels",
                      f"shape {gamma.shape} in {describe(node)}")
    epsilon = float(_attributes(node).get("epsilon", 1e-5))
    if shift is not None:
        mean = mean - shift
    # sqrt(var + eps) is what matters; our layers add 1e-5, so a different epsilon moves into the variance.
    return tuple(a.astype(np.float32) for a in (gamma, beta, mean, var + epsilon - BN_EPSILON))


def _conv(g: _Graph, node, where: str, kernel: int, strides: tuple[int, ...], in_channels: int | None) -> ConvBN:
    """A Conv node (no groups, no dilation, PyTorch's symmetric padding) and the BN after it, folded or not."""
    expected = (f"{where}: a Conv {kernel}x{kernel}, stride {' or '.join(map(str, strides))}, padding "
                f"{kernel // 2}")
    if node.op_type != "Conv":
        raise g.error(expected, describe(node))
    attributes = _attributes(node)
    weight = g.value(node.input[1], f"{where}'s weights").astype(np.float32)
    stride = list(attributes.get("strides", [1, 1]))
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    found = (f"{describe(node)} with kernel {list(weight.shape[2:])}, strides {stride}, pads {pads}, group "
             f"{attributes.get('group', 1)}, dilations {list(attributes.get('dilations', [1, 1]))}")
    if (weight.ndim != 4 or list(weight.shape[2:]) != [kernel, kernel] or len(set(stride)) != 1
            or stride[0] not in strides or pads != [kernel // 2] * 4 or attributes.get("group", 1) != 1
            or set(attributes.get("dilations", [1, 1])) != {1}
            or attributes.get("auto_pad", b"NOTSET") != b"NOTSET"):
        raise g.error(expected, found)
    if in_channels is not None and weight.shape[1] != in_channels:
        raise g.error(f"{where} reading {in_channels} channels", f"{weight.shape[1]} in {describe(node)}")
    bias = (g.value(node.input[2], f"{where}'s bias").astype(np.float32) if len(node.input) > 2 and node.input[2]
            else np.zeros(weight.shape[0], np.float32))
    readers = g.readers(node.output[0])
    folded = not (len(readers) == 1 and readers[0].op_type == "BatchNormalization")
    bn = _identity_bn(bias) if folded else _bn(g, readers[0], weight.shape[0], where, shift=bias)
    out = node.output[0] if folded else readers[0].output[0]
    return ConvBN(np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), bn, int(stride[0]), out, folded)


def _prelu(g: _Graph, tensor: str, channels: int, where: str) -> tuple[np.ndarray, str]:
    node = g.only_reader(tensor, f"{where}: a PRelu", ("PRelu",))
    slope = g.value(node.input[1], f"{where}'s PRelu slopes").astype(np.float32).reshape(-1)
    if slope.shape[0] not in (1, channels):
        raise g.error(f"{where}: a PRelu over {channels} channels", f"{slope.shape[0]} slopes in {describe(node)}")
    return np.broadcast_to(slope, (channels,)).copy(), node.output[0]


def _stem(g: _Graph, image: str) -> tuple[ConvBN, np.ndarray, str]:
    readers = g.readers(image)
    if any(n.op_type in ("Sub", "Mul", "Div", "Add") for n in readers):
        raise g.error("the input read by a Conv (arcface_torch exports take normalised pixels)",
                      f"{', '.join(describe(n) for n in readers)}: the graph normalises raw pixels itself",
                      "This is an MXNet-era insightface model converted to ONNX, with another layout; import the "
                      "arcface_torch model of the same family (e.g. buffalo_l's w600k_r50.onnx) instead. " + _FIX)
    if len(readers) != 1:
        raise g.error("the input read by one Conv (the stem)", ", ".join(describe(n) for n in readers) or "nothing")
    stem = readers[0]
    if stem.op_type == "Conv" and list(_attributes(stem).get("strides", [1, 1])) == [2, 2]:
        raise g.error("the stem: a Conv 3x3, stride 1 (IResNet)", f"{describe(stem)} with stride 2", _MOBILEFACENET)
    conv = _conv(g, stem, "the stem", 3, (1,), 3)
    if conv.kernel.shape[-1] != STAGE_WIDTHS[0]:
        raise g.error(f"the stem: {STAGE_WIDTHS[0]} filters", f"{conv.kernel.shape[-1]} in {describe(stem)}")
    slope, out = _prelu(g, conv.output, STAGE_WIDTHS[0], "the stem")
    return conv, slope, out


def _block(g: _Graph, x: str, bn1_node, others: list, in_channels: int, where: str) -> tuple[Block, str]:
    """One IBasicBlock: BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the shortcut, added."""
    bn1 = _bn(g, bn1_node, in_channels, f"{where} (bn1)")
    conv1_node = g.only_reader(bn1_node.output[0], f"{where}: bn1 read by a Conv 3x3", ("Conv",))
    conv1 = _conv(g, conv1_node, f"{where} (conv1)", 3, (1,), in_channels)
    filters = int(conv1.kernel.shape[-1])
    slope, tensor = _prelu(g, conv1.output, filters, where)
    conv2_node = g.only_reader(tensor, f"{where}: the PRelu read by a Conv 3x3", ("Conv",))
    conv2 = _conv(g, conv2_node, f"{where} (conv2)", 3, (1, 2), filters)
    add = g.only_reader(conv2.output, f"{where}: conv2 added to the shortcut", ("Add",))
    down = None
    projected = conv2.stride != 1 or in_channels != filters  # arcface_torch's rule, and backbones' too
    if projected:
        convs = [n for n in others if n.op_type == "Conv"]
        if len(convs) != 1 or len(others) != 1:
            raise g.error(f"{where}: a 1x1 Conv on the shortcut (the block changes the shape)",
                          ", ".join(describe(n) for n in others) or "the block input added as it is")
        down = _conv(g, convs[0], f"{where} (downsample)", 1, (conv2.stride,), in_channels)
        if down.kernel.shape[-1] != filters:
            raise g.error(f"{where}: a downsample to {filters} channels", f"{down.kernel.shape[-1]}")
        shortcut = down.output
    else:
        if others != [add]:
            raise g.error(f"{where}: the block input added as it is (identity shortcut)",
                          ", ".join(describe(n) for n in others))
        shortcut = x
    if sorted(g.name(i) for i in add.input) != sorted(g.name(t) for t in (conv2.output, shortcut)):
        raise g.error(f"{where}: {describe(add)} adding conv2 and the shortcut", f"inputs {list(add.input)}")
    return Block(bn1, conv1, slope, conv2, down), add.output[0]


def _blocks(g: _Graph, x: str) -> tuple[list[Block], str, object]:
    """IBasicBlocks until the head's BN (the one read by a Flatten); returns them, their output and that BN."""
    blocks: list[Block] = []
    channels = STAGE_WIDTHS[0]
    while True:
        where = f"block {len(blocks) + 1}"
        readers = g.readers(x)
        bns = [n for n in readers if n.op_type == "BatchNormalization"]
        if len(bns) != 1:
            found = (", ".join(describe(n) for n in readers) if readers
                     else f"the graph's end (output {x!r}) after {len(blocks)} blocks")
            raise g.error(f"{where} (a BatchNormalization, then a Conv 3x3) or the embedding head "
                          "(BatchNormalization -> Flatten -> Gemm -> BatchNormalization)", found)
        after = g.readers(bns[0].output[0])
        if len(readers) == 1 and len(after) == 1 and after[0].op_type in ("Flatten", "Reshape"):
            return blocks, x, bns[0]
        block, x = _block(g, x, bns[0], [n for n in readers if n is not bns[0]], channels, where)
        blocks.append(block)
        channels = block.filters


def _stages(g: _Graph, blocks: list[Block]) -> tuple[int, ...]:
    """The blocks per stage (a stage starts at each stride-2 block), checked against our IResNets' widths."""
    depths: list[int] = []
    for block in blocks:
        if block.conv2.stride == 2:
            depths.append(0)
        if not depths:
            raise g.error("the first block with stride 2 (IResNet downsamples at each stage's start)", "stride 1")
        stage = len(depths) - 1
        if stage >= len(STAGE_WIDTHS) or block.filters != STAGE_WIDTHS[stage]:
            raise g.error(f"{len(STAGE_WIDTHS)} stages of {', '.join(map(str, STAGE_WIDTHS))} filters",
                          f"stage {stage + 1} with {block.filters}")
        depths[-1] += 1
    return tuple(depths)


def _fc(g: _Graph, flat: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The FC after the flatten: Gemm (alpha, beta, transB) or MatMul (+ Add); kernel [in, out] in NCHW order."""
    node = g.only_reader(flat, "the embedding head: the flattened features read by a Gemm (the FC)",
                         ("Gemm", "MatMul"))
    if node.op_type == "MatMul":
        kernel = g.value(node.input[1], "the FC's weights").astype(np.float64)
        out = node.output[0]
        readers = g.readers(out)
        bias = np.zeros(kernel.shape[1])
        if len(readers) == 1 and readers[0].op_type == "Add":
            other = next(i for i in readers[0].input if g.name(i) != g.name(out))
            bias, out = g.value(other, "the FC's bias").astype(np.float64).reshape(-1), readers[0].output[0]
        return kernel, bias, out
    attributes = _attributes(node)
    if attributes.get("transA", 0):
        raise g.error("the FC as Gemm(features, weights)", f"{describe(node)} with transA=1")
    kernel = g.value(node.input[1], "the FC's weights").astype(np.float64)
    kernel = kernel.T if attributes.get("transB", 0) else kernel
    kernel = kernel * float(attributes.get("alpha", 1.0))
    bias = np.zeros(kernel.shape[1])
    if len(node.input) > 2 and node.input[2]:
        bias = g.value(node.input[2], "the FC's bias").astype(np.float64).reshape(-1)
        bias = bias * float(attributes.get("beta", 1.0))
    return kernel, np.broadcast_to(bias, (kernel.shape[1],)), node.output[0]


def _head(g: _Graph, x: str, bn2_node) -> tuple[tuple, np.ndarray, np.ndarray, tuple, int]:
    """BN - Flatten - FC - BatchNorm1d -> (bn2, FC kernel in Keras' flatten order, bias, features BN, side)."""
    channels = STAGE_WIDTHS[-1]
    bn2 = _bn(g, bn2_node, channels, "the embedding head (bn2)")
    flat = g.readers(bn2_node.output[0])[0].output[0]
    kernel, bias, out = _fc(g, flat)
    cells = kernel.shape[0] // channels
    side = int(round(np.sqrt(cells)))
    if kernel.shape[0] != channels * side * side:
        raise g.error(f"the FC reading {channels} x H x H features", f"{kernel.shape[0]} inputs")
    embedding = kernel.shape[1]
    readers = g.readers(out)
    if len(readers) == 1 and readers[0].op_type == "BatchNormalization":
        gamma, beta, mean, var = _bn(g, readers[0], embedding, "the embedding (features)")
        out = readers[0].output[0]
    else:  # no BatchNorm1d (or folded into the FC): the identity
        gamma, beta, mean, var = _identity_bn(np.zeros(embedding, np.float32))
    if g.name(out) not in g.outputs:
        raise g.error("the embedding (the features BatchNormalization) as the graph's output",
                      ", ".join(describe(n) for n in g.readers(out)) or f"tensor {out!r} unused")
    # Our final BN has no scale (insightface freezes it at 1): a gamma goes into the FC and the mean, exactly.
    kernel, bias, mean = kernel * gamma, bias * gamma, mean * gamma
    # PyTorch's flatten order is (C, H, W); Keras' is (H, W, C).
    kernel = kernel.reshape(channels, side, side, embedding).transpose(1, 2, 0, 3).reshape(-1, embedding)
    features = (beta, mean.astype(np.float32), var)
    return bn2, kernel.astype(np.float32), bias.astype(np.float32), features, side * 16


def _input(g: _Graph) -> tuple[str, list]:
    from onnx import TensorProto

    if len(g.inputs) != 1:
        raise g.error("one input (the face batch)", f"{len(g.inputs)} inputs: {[i.name for i in g.inputs]}")
    tensor_type = g.inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise g.error("a float32 input [N, 3, H, W] (NCHW, RGB)",
                      f"{g.inputs[0].name!r} of type {tensor_type.elem_type} and shape {dims}")
    return g.inputs[0].name, dims


def parse_iresnet(model, source: str) -> IResNetWeights:
    """The weights of an arcface_torch IResNet ONNX graph, in our layers' terms; an error names any mismatch."""
    g = _Graph(model, source)
    image, dims = _input(g)
    stem, stem_slope, x = _stem(g, image)
    blocks, x, bn2_node = _blocks(g, x)
    depths = _stages(g, blocks)
    known = {tuple(IRESNET_DEPTHS[plain]): name for name, plain in INSIGHTFACE_IRESNETS.items()}
    if depths not in known:
        raise g.error("the blocks per stage of one of insightface's IResNets ("
                      + ", ".join(f"{k} {list(IRESNET_DEPTHS[v])}" for k, v in INSIGHTFACE_IRESNETS.items()) + ")",
                      f"{list(depths)} ({sum(depths)} blocks)")
    bn2, fc_kernel, fc_bias, features, side = _head(g, x, bn2_node)
    if any(d not in (None, side) for d in dims[2:]):
        raise g.error(f"an input of {side}x{side} (what the FC's size implies)", f"{dims[2]}x{dims[3]}")
    # The fold below is exact only because both normalisations share the mean: a pad of 0 is pixel 127.5 in both.
    if float(NORMALIZATION["mean"]) != INSIGHTFACE_MEAN:
        raise RuntimeError("arcface.artifacts.NORMALIZATION's mean is no longer insightface's 127.5: the input "
                           "fold in arcface.models.insightface needs a bias term now")
    ratio = 1.0 / (float(NORMALIZATION["scale"]) * INSIGHTFACE_STD)  # 128 / 127.5
    stem = dataclasses.replace(stem, kernel=(stem.kernel.astype(np.float64) * ratio).astype(np.float32))
    return IResNetWeights(stem, stem_slope, blocks, bn2, fc_kernel, fc_bias, features, side, depths, known[depths])


# ---------------------------------------------------------------------------------------------------------
# Our network, with PyTorch's padding
# ---------------------------------------------------------------------------------------------------------
def _set(layer, *weights) -> None:
    layer.set_weights([np.asarray(w, np.float32).reshape(v.shape) for w, v in zip(weights, layer.weights,
                                                                                    strict=True)])


def _conv_bns(weights: IResNetWeights) -> list[tuple[str, str, ConvBN]]:
    """(conv layer, BN layer, weights) of every conv + BN pair of our network."""
    pairs = [("stem_conv", "stem_bn", weights.stem)]
    names = [f"stage{s + 1}_block{b + 1}" for s, n in enumerate(weights.depths) for b in range(n)]
    for name, block in zip(names, weights.blocks, strict=True):
        pairs += [(f"{name}_conv1", f"{name}_bn2", block.conv1), (f"{name}_conv2", f"{name}_bn3", block.conv2)]
        if block.down is not None:
            pairs.append((f"{name}_down_conv", f"{name}_down_bn", block.down))
    return pairs


def build_model(weights: IResNetWeights):
    """The embedding model (image -> unit embedding) holding ``weights``, as ``build_models`` nests it."""
    backbone = get_backbone(weights.backbone, weights.image_size, weights.embedding_size)
    for conv, bn, convbn in _conv_bns(weights):
        _set(backbone.get_layer(conv), convbn.kernel)
        _set(backbone.get_layer(bn), *convbn.bn)
    _set(backbone.get_layer("stem_prelu"), weights.stem_slope)
    names = [f"stage{s + 1}_block{b + 1}" for s, n in enumerate(weights.depths) for b in range(n)]
    for name, block in zip(names, weights.blocks, strict=True):
        _set(backbone.get_layer(f"{name}_bn1"), *block.bn1)
        _set(backbone.get_layer(f"{name}_prelu"), block.slope)
    _set(backbone.get_layer("embedding_bn_in"), *weights.bn2)
    _set(backbone.get_layer("embedding_fc"), weights.fc_kernel, weights.fc_bias)
    _set(backbone.get_layer("embedding"), *weights.features)
    image = keras.Input((weights.image_size, weights.image_size, 3), name="image")
    return keras.Model(image, L2Normalize(name="l2_normalize")(backbone(image)), name="arcface_embedding")


def calibrate(model, weights: IResNetWeights, pixels: np.ndarray, batch_size: int = 16) -> int:
    """Give each folded BN the statistics of its input over ``pixels`` (uint8 RGB faces); returns how many.

    The identity BN computes in inference what the source does, but in training mode a BN normalises by the
    batch's statistics: as the identity, the fine-tune's first steps would run another network. With mean m and
    variance v of its input measured on faces, the layer gets gamma = sqrt(v + eps), beta = bias + m, moving
    mean m, moving variance v: inference is unchanged (gamma (x - m) / sqrt(v + eps) + bias + m = x + bias), and
    training on batches like these computes the same.
    """
    backbone = model.get_layer(weights.backbone)
    names = [bn for _, bn, convbn in _conv_bns(weights) if convbn.folded]
    if not names:
        return 0
    probe = keras.Model(backbone.input, [backbone.get_layer(name).input for name in names])
    # Per channel, over images and positions, in float64: the count, the sum and the sum of squares.
    moments = [np.zeros((3, backbone.get_layer(name).input.shape[-1])) for name in names]
    for start in range(0, len(pixels), batch_size):
        outputs = probe(np.asarray(normalize(pixels[start:start + batch_size])), training=False)
        for moment, out in zip(moments, outputs, strict=True):
            values = np.asarray(out, np.float64).reshape(-1, moment.shape[1])
            moment += np.stack([np.full(moment.shape[1], len(values)), values.sum(axis=0),
                                np.square(values).sum(axis=0)])
    for name, (count, total, square) in zip(names, moments, strict=True):
        layer = backbone.get_layer(name)
        _, bias, _, _ = layer.get_weights()
        mean = total / count
        var = np.maximum(square / count - np.square(mean), 0.0)  # biased, as Keras' BN in training
        _set(layer, np.sqrt(var + BN_EPSILON), bias + mean, mean, var)
    return len(names)


# ---------------------------------------------------------------------------------------------------------
# Reading the file, checking the result, writing the folder
# ---------------------------------------------------------------------------------------------------------
def read_onnx(source: str):
    """The ONNX model in ``source`` (only read); an error for a missing file or one that is not a model."""
    import onnx

    if not os.path.isfile(source):
        where = "is a folder" if os.path.isdir(source) else "does not exist"
        raise InsightfaceImportError(f"{source} {where}; pass the downloaded .onnx file (e.g. w600k_r50.onnx from "
                                     "insightface's buffalo_l pack)")
    with open(source, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        raise InsightfaceImportError(f"{source} is a zip archive (a PyTorch checkpoint such as backbone.pth, or a "
                                     "model pack): convert a backbone.pth with arcface_torch's torch2onnx.py, or "
                                     "unzip the pack, and import the .onnx file")
    try:
        model = onnx.load(source)
    except Exception as e:  # noqa: BLE001 - protobuf and the external-data reader raise many kinds
        raise InsightfaceImportError(f"{source} is not an ONNX model ({type(e).__name__}: {e}); pass the .onnx "
                                     "file of an insightface recognition model (e.g. w600k_r50.onnx)") from None
    if not model.graph.node:
        raise InsightfaceImportError(f"{source} is not an ONNX model (it holds no graph); pass the .onnx file of "
                                     "an insightface recognition model (e.g. w600k_r50.onnx)")
    return model


def calibration_pixels(paths: list[str], image_size: int) -> np.ndarray:
    """uint8 RGB [N, S, S, 3] of the face images in ``paths`` (files, or folders searched recursively), made as
    every entrance makes them (:func:`arcface.data.preprocess.face_pixels`)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                            if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InsightfaceImportError(f"--calibration_images {path} does not exist; pass aligned face crops (e.g. "
                                         "the crops/ folder of `arcface align`) or leave the option out")
    if len(files) < MIN_CALIBRATION_IMAGES:
        raise InsightfaceImportError(
            f"--calibration_images {' '.join(paths)} holds {len(files)} image(s); the BatchNorm statistics need at "
            f"least {MIN_CALIBRATION_IMAGES} aligned face crops (a few hundred of the faces you will fine-tune on "
            "is better), or leave the option out")
    pixels = []
    for file in files:
        with open(file, "rb") as f:
            contents = f.read()
        try:
            pixels.append(face_pixels(tf.constant(contents), image_size).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            raise InsightfaceImportError(f"--calibration_images: {file} is not a readable image; remove it, or use "
                                         "JPEG, PNG, GIF, BMP or binary PGM/PPM") from None
    return np.stack(pixels)


def _check_images(image_size: int, n: int = CHECK_IMAGES) -> np.ndarray:
    """uint8 RGB [N, S, S, 3]: smooth random images (noise and gradients), deterministic."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, size=(n, 8, 8, 3))
    smooth = np.kron(low, np.ones((1, image_size // 8 + 1, image_size // 8 + 1, 1)))[:, :image_size, :image_size]
    noise = rng.normal(0, 20, size=(n, image_size, image_size, 3))
    return np.clip(np.round(smooth + noise), 0, 255).astype(np.uint8)


def insightface_blob(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, S, S, 3] -> what insightface feeds its recognition models: (x - 127.5) / 127.5, NCHW."""
    return ((pixels.astype(np.float32) - INSIGHTFACE_MEAN) / INSIGHTFACE_STD).transpose(0, 3, 1, 2).copy()


def parity(source: str, model, pixels: np.ndarray) -> dict[str, Any]:
    """Our model (fed our normalisation) against onnxruntime running ``source`` (fed insightface's), both L2
    normalised: the lowest cosine and the largest difference of one dimension."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # a file declaring a batch of 1 as its output shape warns at every run
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: insightface_blob(pixels)})[0]
    ours = np.asarray(model(np.asarray(normalize(pixels)), training=False))
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    return {"images": int(len(pixels)), "min_cosine": float(np.min(np.sum(reference * ours, axis=1))),
            "max_abs_diff": float(np.max(np.abs(reference - ours)))}


def _check_parity(source: str, figures: dict[str, Any]) -> None:
    if figures["min_cosine"] < PARITY_MIN_COSINE or figures["max_abs_diff"] > PARITY_MAX_ABS:
        raise InsightfaceImportError(
            f"the network imported from {source} does not compute what onnxruntime computes with the file (lowest "
            f"cosine {figures['min_cosine']:.6f} < {PARITY_MIN_COSINE} or largest difference "
            f"{figures['max_abs_diff']:.2e} > {PARITY_MAX_ABS}); nothing was written. The graph matched an IResNet "
            "but computes something else: please report it with the file's name and where it came from")


def _check_target(save_path: str) -> None:
    if os.path.exists(save_path) and not os.path.isdir(save_path):
        raise InsightfaceImportError(f"--save_path {save_path} is a file; pass a folder for the model")
    present = [name for name in (ModelDir.EMBEDDING_MODEL_FILE, ModelDir.TRAINING_MODEL_FILE, ModelDir.METADATA_FILE)
               if os.path.exists(os.path.join(save_path, name))]
    if present:
        raise InsightfaceImportError(f"--save_path {save_path} already holds a model ({', '.join(present)}); choose "
                                     "an empty or new folder (nothing is overwritten)")


def _metadata(weights: IResNetWeights, source: str, sha256: str, model, figures: dict[str, Any],
              batchnorm: dict[str, Any]) -> dict[str, Any]:
    return {
        "package_version": __version__, "framework": f"tensorflow {tf.__version__} / keras {keras.__version__}",
        "class_names": [], "manifest_sha256": None,
        "image_size": weights.image_size, "embedding_size": weights.embedding_size,
        "normalization": NORMALIZATION, "center_crop": 1.0, "backbone": weights.backbone, "margin": "arcface",
        # insightface's models read faces warped onto the same 5-point template as the align step's crops.
        "alignment": {"method": "mtcnn", "template": TEMPLATE_NAME, "image_size": weights.image_size},
        "epochs_completed": 0, "steps": 0, "history": [],
        "imported_from": {
            "path": os.path.abspath(source), "sha256": sha256, "format": "onnx",
            "architecture": f"{SOURCE_ARCHITECTURE} ({weights.backbone}: blocks {list(weights.depths)})",
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "input": "RGB (x - 127.5) / 127.5, NCHW; folded into the stem conv (this model reads (x - 127.5) / 128, "
                     "NHWC)",
            "padding": "PyTorch's (1 pixel on every side) in the stride-2 3x3 convs",
            "folded_batchnorms": batchnorm, "parity": figures, "license": LICENSE_NOTE},
    }


def import_onnx(source: str | os.PathLike, save_path: str | os.PathLike, embedding_size: int | None = None,
                calibration_images: list[str] | None = None) -> ImportResult:
    """Map the insightface IResNet in ``source`` onto our layers, check it against onnxruntime, and write the model
    folder ``save_path``. ``embedding_size``: fail unless the source's embedding has this size.
    ``calibration_images``: face crops (files or folders) whose statistics the folded BNs get (:func:`calibrate`),
    for fine-tuning; without them those BNs start as the identity."""
    source, save_path = os.fspath(source), os.fspath(save_path)
    _check_target(save_path)
    model = read_onnx(source)
    sha256 = file_sha256(source)
    weights = parse_iresnet(model, source)
    if embedding_size is not None and weights.embedding_size != embedding_size:
        raise InsightfaceImportError(
            f"{source} gives {weights.embedding_size}-d embeddings, but --embedding_size {embedding_size} was asked "
            f"for; pass --embedding_size {weights.embedding_size} (or none) to import it, or the model of the size "
            "you need")
    pixels = calibration_pixels(calibration_images, weights.image_size) if calibration_images else None
    keras_model = build_model(weights)
    folded = sum(convbn.folded for _, _, convbn in _conv_bns(weights))
    batchnorm = {"count": folded, "calibrated_on_images": None,
                 "start": "the identity plus the conv's bias (gamma 1, mean 0, variance 1 - epsilon)"}
    if pixels is not None:
        calibrate(keras_model, weights, pixels)
        batchnorm.update(calibrated_on_images=len(pixels), start="gamma sqrt(v + eps), beta bias + m, moving mean m "
                         "and variance v of their input on the calibration images")
    figures = parity(source, keras_model, _check_images(weights.image_size))
    _check_parity(source, figures)
    if file_sha256(source) != sha256:
        raise InsightfaceImportError(f"{source} changed while it was imported; import it again once it is complete")
    os.makedirs(save_path, exist_ok=True)
    save_keras(keras_model, os.path.join(save_path, ModelDir.EMBEDDING_MODEL_FILE))
    config = TrainConfig(backbone=weights.backbone, image_size=weights.image_size,
                         embedding_size=weights.embedding_size, dropout=0.0, save_path=save_path)
    config.save(os.path.join(save_path, ModelDir.CONFIG_FILE))
    write_json(os.path.join(save_path, ModelDir.METADATA_FILE),
               _metadata(weights, source, sha256, model, figures, batchnorm))
    return ImportResult(save_path, weights.backbone, weights.image_size, weights.embedding_size, figures)
