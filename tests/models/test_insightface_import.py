"""`arcface import`: an insightface IResNet ONNX file becomes a model folder computing what onnxruntime computes.

Nothing is downloaded: the source file is built here with onnx.helper as PyTorch's eval-mode export of
arcface_torch's iresnet50 writes it (torch2onnx.py, w600k_r50.onnx): NCHW input 'input.1' [None, 3, 112, 112],
BatchNorms after convs folded into the convs (initializers 'onnx::Conv_<n>'), the BNs before convs kept
('layer1.0.bn1.weight', ...), PRelu slopes [C, 1, 1], Flatten - Gemm(transB) - BatchNormalization ('features'),
with random weights, BN statistics and PReLU slopes, so that a wrong mapping shows.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from arcface import cli
from arcface.models import insightface
from arcface.models.insightface import InsightfaceImportError, import_onnx

IRESNET50 = (3, 4, 14, 3)
WIDTHS = (64, 128, 256, 512)


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TorchStyleExport:
    """An ONNX graph written the way torch.onnx.export names things: values numbered, folded constants
    'onnx::<Op>_<n>', module parameters by their state-dict names."""

    def __init__(self, seed: int):
        from onnx import helper

        self.helper = helper
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers, self.count = [], [], 0

    def _name(self) -> str:
        self.count += 1
        return str(self.count)

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes) -> str:
        out = self._name()
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=f"{op}_{len(self.nodes)}", **attributes))
        return out

    def bn_stats(self, n: int, gamma=(0.5, 1.5)):
        return (self.rng.uniform(*gamma, n), self.rng.normal(0, 0.1, n), self.rng.normal(0, 0.1, n),
                self.rng.uniform(0.5, 2.0, n))

    def bn(self, x: str, n: int, module: str, gamma=(0.5, 1.5)) -> str:
        stats = self.bn_stats(n, gamma)
        parameters = ("weight", "bias", "running_mean", "running_var")
        names = [self.constant(f"{module}.{p}", a) for p, a in zip(parameters, stats, strict=True)]
        return self.node("BatchNormalization", [x, *names], epsilon=1e-5, momentum=0.9)

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, gamma=(0.5, 1.5), groups: int = 1) -> str:
        """conv -> BN, folded as the eval-mode export does: W * g / sqrt(v + eps), b = beta - mean * that."""
        weight = self.rng.normal(0, np.sqrt(2.0 / (cin // groups * k * k)), (cout, cin // groups, k, k))
        g, beta, mean, var = self.bn_stats(cout, gamma)
        scale = g / np.sqrt(var + 1e-5)
        w = self.constant(f"onnx::Conv_{self._name()}", weight * scale[:, None, None, None])
        b = self.constant(f"onnx::Conv_{self._name()}", beta - mean * scale)
        return self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
                         dilations=[1, 1], group=groups)

    def prelu(self, x: str, n: int) -> str:
        slope = self.constant(f"onnx::PRelu_{self._name()}", self.rng.uniform(0.05, 0.5, (n, 1, 1)))
        return self.node("PRelu", [x, slope])

    def save(self, path, output: str, output_dims: list, input_name: str = "input.1") -> None:
        import onnx

        h = self.helper
        graph = h.make_graph(self.nodes, "torch_jit", [h.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT,
                                                                                 ["None", 3, 112, 112])],
                             [h.make_tensor_value_info(output, onnx.TensorProto.FLOAT, output_dims)],
                             initializer=self.initializers)
        model = h.make_model(graph, producer_name="pytorch", producer_version="1.13.1",
                             opset_imports=[h.make_opsetid("", 11)])
        model.ir_version = 6
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


def iresnet_onnx(path, depths=IRESNET50, embedding_size: int = 512, seed: int = 0, stages: int = 4) -> str:
    """arcface_torch's IResNet (eval-mode ONNX export); ``stages`` < 4 ends the graph early (a truncated file)."""
    e = TorchStyleExport(seed)
    x = e.prelu(e.conv_bn("input.1", 3, 64, 3, 1), 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip(WIDTHS[:stages], depths, strict=False)):
        for block in range(blocks):
            stride = 2 if block == 0 else 1
            y = e.bn(x, inplanes, f"layer{layer + 1}.{block}.bn1")
            y = e.prelu(e.conv_bn(y, inplanes, planes, 3, 1), planes)
            # A small bn3 scale, as trained IResNets have: the residual sum stays in range over 24 blocks.
            y = e.conv_bn(y, planes, planes, 3, stride, gamma=(0.05, 0.3))
            shortcut = e.conv_bn(x, inplanes, planes, 1, stride) if stride != 1 or inplanes != planes else x
            x, inplanes = e.node("Add", [y, shortcut]), planes
    if stages == 4:
        x = e.node("Flatten", [e.bn(x, 512, "bn2")], axis=1)
        fc_w = e.constant("fc.weight", e.rng.normal(0, 1 / np.sqrt(512 * 49), (embedding_size, 512 * 49)))
        fc_b = e.constant("fc.bias", e.rng.normal(0, 0.1, embedding_size))
        x = e.node("Gemm", [x, fc_w, fc_b], alpha=1.0, beta=1.0, transB=1)
        g, beta, mean, var = e.bn_stats(embedding_size)
        names = [e.constant(f"features.{p}", a) for p, a in zip(("weight", "bias", "running_mean", "running_var"),
                                                                (np.ones(embedding_size), beta, mean, var),
                                                                strict=True)]
        x = e.node("BatchNormalization", [x, *names], epsilon=1e-5, momentum=0.9)
    e.save(path, x, [1, embedding_size] if stages == 4 else ["None", inplanes, None, None])
    return str(path)


def mobilenet_like_onnx(path) -> str:
    """The start of insightface's MobileFaceNet (w600k_mbf): a stride-2 stem, a grouped 3x3 conv."""
    e = TorchStyleExport(1)
    x = e.prelu(e.conv_bn("input.1", 3, 128, 3, 2), 128)
    x = e.prelu(e.conv_bn(x, 128, 128, 3, 1, groups=64), 128)
    x = e.node("Flatten", [e.node("GlobalAveragePool", [x])], axis=1)
    x = e.node("Gemm", [x, e.constant("fc.weight", e.rng.normal(0, 0.1, (512, 128)))], transB=1)
    e.save(path, x, [1, 512])
    return str(path)


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = iresnet_onnx(tmp_path_factory.mktemp("source") / "w600k_r50.onnx")
    return path, sha256(path)


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    """`arcface import SOURCE --save_path DIR`, once for the module."""
    folder = tmp_path_factory.mktemp("imported") / "r50"
    assert cli.main(["import", source[0], "--save_path", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def faces(sample_dir):
    """8 ORL faces of the bundled sample (8 people) and their uint8 112x112 pixels as every entrance makes them."""
    import tensorflow as tf

    from arcface.data.preprocess import face_pixels

    files = [sample_dir / "train" / f"s{i}" / "1.pgm" for i in range(1, 9)]
    pixels = np.stack([face_pixels(tf.constant(f.read_bytes()), 112).numpy() for f in files])
    return [str(f) for f in files], pixels


def onnxruntime_embeddings(path: str, pixels: np.ndarray) -> np.ndarray:
    """insightface's way (model_zoo/arcface_onnx.py): RGB (x - 127.5) / 127.5, NCHW; then L2-normalised."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the file declares [1, 512] as its output shape, as w600k_r50.onnx does
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    blob = ((pixels.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    out = session.run(None, {"input.1": np.ascontiguousarray(blob)})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_imported_folder_embeds_faces_as_onnxruntime_does(source, imported, faces):
    from arcface.embedding import load_embedder

    paths, pixels = faces
    reference = onnxruntime_embeddings(source[0], pixels)
    ours = load_embedder(imported, align="none").embed(paths)  # the project's own entrance: bytes -> model_input
    cosines = np.sum(reference * ours, axis=1)
    print(f"\nparity on {len(paths)} ORL faces: min cosine {cosines.min():.7f}, max |diff| "
          f"{np.abs(reference - ours).max():.2e}; mean cosine between different faces "
          f"{(reference @ reference.T)[~np.eye(len(paths), dtype=bool)].mean():.3f}")
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)
    assert sha256(source[0]) == source[1], "the source file must not change"


def test_folder_is_a_training_runs_folder(source, imported):
    from arcface.artifacts import load_model_dir

    trained = load_model_dir(imported)
    assert trained.config.backbone == "IResNet50" and trained.config.embedding_size == 512
    assert trained.embedding_model.output_shape == (None, 512) and trained.image_size == 112
    metadata = json.loads((imported / "metadata.json").read_text())
    assert metadata["normalization"] == {"mean": 127.5, "scale": 1 / 128, "channels": "RGB", "layout": "NHWC"}
    assert metadata["alignment"]["method"] == "mtcnn"
    record = metadata["imported_from"]
    assert record["sha256"] == source[1] and "non-commercial" in record["license"]
    assert record["parity"]["min_cosine"] >= 0.9999 and record["parity"]["max_abs_diff"] <= 1e-4


def test_the_projects_resnet50_pads_otherwise_so_the_import_is_an_iresnet50(imported, faces):
    """The project's ResNet50 pads its stride-2 convs the TF way (0 before, 1 after), insightface's the PyTorch way:
    the same weights in ResNet50 compute something else, so the import is built as IResNet50 (PyTorch's padding),
    which a fine-tune asks for with --backbone IResNet50 and so starts from the very same network."""
    from arcface.artifacts import load_model_dir
    from arcface.data.preprocess import normalize
    from arcface.models import get_backbone

    model = load_model_dir(imported).embedding_model
    backbone = next(layer for layer in model.layers if layer.name == "IResNet50")
    x = np.asarray(normalize(faces[1]))
    exact = np.array(backbone(x, training=False))
    for name, differs in (("ResNet50", True), ("IResNet50", False)):
        other = get_backbone(name, 112, 512)
        other.set_weights(backbone.get_weights())
        got = np.array(other(x, training=False))
        assert (np.abs(exact - got).max() > 1e-3) == differs, name


def test_calibration_gives_the_folded_batchnorms_the_faces_statistics(tmp_path, sample_dir, faces):
    """For fine-tuning: each BN the export folded gets its input's statistics on faces, inference unchanged."""
    import keras

    from arcface.artifacts import load_model_dir
    from arcface.data.preprocess import normalize

    path = iresnet_onnx(tmp_path / "r18.onnx", depths=(2, 2, 2, 2), seed=3)
    result = import_onnx(path, tmp_path / "r18", calibration_images=[str(sample_dir / "validation")])
    assert result.backbone == "IResNet18"
    model = load_model_dir(tmp_path / "r18").embedding_model
    ours = np.asarray(model(np.asarray(normalize(faces[1])), training=False))
    np.testing.assert_allclose(ours, onnxruntime_embeddings(path, faces[1]), rtol=0, atol=1e-4)

    backbone = model.get_layer("IResNet18")
    crops = insightface.calibration_pixels([str(sample_dir / "validation")], 112)
    stem = np.asarray(keras.Model(backbone.input, backbone.get_layer("stem_conv").output)(
        np.asarray(normalize(crops))), np.float64).reshape(-1, 64)
    gamma, beta, mean, var = backbone.get_layer("stem_bn").get_weights()
    np.testing.assert_allclose(mean, stem.mean(axis=0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(var, stem.var(axis=0), rtol=1e-3)
    np.testing.assert_allclose(gamma, np.sqrt(var + 1e-5), rtol=1e-6)
    record = json.loads((tmp_path / "r18" / "metadata.json").read_text())["imported_from"]["folded_batchnorms"]
    assert record["calibrated_on_images"] == len(crops) == 30 and record["count"] == 1 + 8 * 2 + 4


def test_calibration_needs_enough_faces(sample_dir):
    one = str(sample_dir / "train" / "s1" / "1.pgm")
    with pytest.raises(InsightfaceImportError, match=f"{one} holds 1 image.*at least 16 aligned face crops"):
        insightface.calibration_pixels([one], 112)


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: every message names the file and the way out; the source is never changed, nothing is written
# ---------------------------------------------------------------------------------------------------------
def refused(path, tmp_path, match: str, **kwargs) -> str:
    before = sha256(path)
    with pytest.raises(InsightfaceImportError, match=match) as error:
        import_onnx(path, tmp_path / "out", **kwargs)
    assert sha256(path) == before
    assert not (tmp_path / "out").exists()
    assert str(path) in str(error.value)
    return str(error.value)


def test_not_a_model(tmp_path):
    path = tmp_path / "w600k_r50.onnx"
    path.write_text("<html>404 Not Found</html>\n")
    message = refused(path, tmp_path, "is not an ONNX model")
    assert "pass the .onnx file of an insightface recognition model" in message


def test_a_pytorch_checkpoint_is_sent_to_torch2onnx(tmp_path):
    path = tmp_path / "backbone.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    refused(path, tmp_path, "torch2onnx.py")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(InsightfaceImportError, match="does not exist; pass the downloaded .onnx file"):
        import_onnx(tmp_path / "nothing.onnx", tmp_path / "out")


def test_truncated_graph(tmp_path):
    path = iresnet_onnx(tmp_path / "cut.onnx", stages=2)
    message = refused(path, tmp_path, "expected block 8 .* or the embedding head")
    assert "the graph's end" in message and "after 7 blocks" in message and "torch2onnx.py" in message


def test_mobilefacenet_topology(tmp_path):
    path = mobilenet_like_onnx(tmp_path / "w600k_mbf.onnx")
    message = refused(path, tmp_path, "expected the stem: a Conv 3x3, stride 1")
    assert "MobileFaceNet" in message and "w600k_r50.onnx" in message


def test_other_embedding_size(source, tmp_path):
    message = refused(source[0], tmp_path, "gives 512-d embeddings, but --embedding_size 128", embedding_size=128)
    assert "pass --embedding_size 512" in message


def test_an_existing_model_is_not_overwritten(source, imported, tmp_path):
    before = sha256(imported / "embedding_model.keras")
    with pytest.raises(InsightfaceImportError, match="already holds a model .*choose an empty or new folder"):
        import_onnx(source[0], imported)
    assert sha256(imported / "embedding_model.keras") == before


def test_cli_reports_the_error_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00\x01garbage")
    assert cli.main(["import", str(path), "--save_path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arcface import: error: ") and str(path) in err and "Traceback" not in err


def test_parity_check_refuses_a_wrong_mapping(source, monkeypatch, tmp_path):
    """The import's own check: with the kernels' kh and kw swapped (the classic NCHW -> NHWC slip), nothing is
    written."""
    parse = insightface.parse_iresnet

    def swapped(*args):
        weights = parse(*args)
        for convbn in [weights.stem] + [c for b in weights.blocks for c in (b.conv1, b.conv2)]:
            convbn.kernel = np.ascontiguousarray(convbn.kernel.transpose(1, 0, 2, 3))
        return weights

    monkeypatch.setattr(insightface, "parse_iresnet", swapped)
    refused(source[0], tmp_path, "does not compute what onnxruntime computes")
