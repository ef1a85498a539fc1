"""Backbones: output shapes, parameter counts against published figures, save/reload of both models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from arcface.artifacts import load_keras, save_keras
from arcface.config import TrainConfig
from arcface.models import available_backbones, build_models, get_backbone


def trainable_params(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Published trainable-parameter counts at 112x112 with a 512-d embedding (128-d for MobileFaceNet):
# - ResNet100: 65.13 M, OpenVINO Open Model Zoo card "face-recognition-resnet100-arcface-onnx" (MParams 65.1320),
#   the insightface LResNet100E-IR model converted from MXNet.
# - ResNet50: 43.59 M, insightface arcface_torch iresnet50 (sum of requires_grad parameters, BN running stats
#   excluded), the figure quoted for its r50 models (w600k_r50.onnx is 174 MB of float32 = 43.6 M).
# - MobileFaceNet: 0.99 M, Chen et al. 2018 (arXiv 1804.07573), section 4.1, with the 128-d output.
# - VGG16 convolutional part: 14,714,688, the Keras applications documentation (include_top=False).
PUBLISHED = {"ResNet100": 65.13e6, "ResNet50": 43.59e6}


@pytest.mark.parametrize("name", ["ResNet100", "ResNet50"])
def test_iresnet_parameter_count_matches_insightface(name):
    model = get_backbone(name, 112, 512)
    assert trainable_params(model) == pytest.approx(PUBLISHED[name], rel=0.005)
    assert model.output_shape == (None, 512)


def test_mobilefacenet_parameter_count_matches_paper():
    model = get_backbone("MobileFaceNet", 112, 128)
    assert trainable_params(model) == pytest.approx(0.99e6, rel=0.02)
    assert model.output_shape == (None, 128)


def test_vgg16_uses_the_keras_application():
    model = get_backbone("VGG16", 112, 512)
    conv = [layer for layer in model.layers if layer.name.startswith("block")]
    assert sum(layer.count_params() for layer in conv) == 14_714_688
    assert model.output_shape == (None, 512)


def test_registry_lists_the_paper_and_edge_backbones():
    assert {"ResNet50", "ResNet100", "VGG16", "ResNet18", "ResNet34", "MobileFaceNet"} <= set(available_backbones())
    with pytest.raises(ValueError, match="known backbones: .*ResNet50"):
        get_backbone("ResNet51")


@pytest.mark.parametrize("name", ["ResNet18", "MobileFaceNet", "TinyFaceNet"])
def test_small_backbones_run_at_other_sizes(name):
    model = get_backbone(name, 64, 32)
    out = model(np.zeros((2, 64, 64, 3), np.float32), training=False)
    assert out.shape == (2, 32)


@pytest.mark.parametrize("margin", ["arcface", "softmax"])
def test_two_models_share_the_backbone_and_reload_in_safe_mode(tmp_path, margin):
    config = TrainConfig(backbone="TinyFaceNet", image_size=48, embedding_size=16, n_classes=4, margin=margin)
    training_model, embedding_model = build_models(config)
    images = np.random.default_rng(0).normal(size=(3, 48, 48, 3)).astype(np.float32)
    labels = np.array([0, 1, 3], np.int32)
    assert training_model([images, labels]).shape == (3, 4)
    emb = embedding_model(images).numpy()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    shared = {id(w) for w in embedding_model.weights} & {id(w) for w in training_model.weights}
    assert len(shared) == len(embedding_model.weights), "the embedding model must reuse the training backbone"

    save_keras(training_model, tmp_path / "t.keras")
    save_keras(embedding_model, tmp_path / "e.keras")
    t2, e2 = load_keras(tmp_path / "t.keras"), load_keras(tmp_path / "e.keras")
    np.testing.assert_allclose(e2(images).numpy(), emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t2([images, labels]).numpy(), training_model([images, labels]).numpy(),
                               rtol=1e-5, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp-*")), "no temporary file is left behind"


def test_unsafe_model_file_is_refused(tmp_path):
    from arcface.artifacts import ModelLoadError

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelLoadError, match="contains code"):
        load_keras(tmp_path / "lambda.keras")


def _nearest_class_mean_accuracy(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-class-mean accuracy of L2-normalized embeddings (NumPy, independent of the model)."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sums = np.zeros((labels.max() + 1, e.shape[1]))
    np.add.at(sums, labels, e)
    right = 0
    for i in range(len(labels)):
        means = sums.copy()
        means[labels[i]] -= e[i]
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        right += int(np.argmax(means @ e[i]) == labels[i])
    return right / len(labels)


def test_untrained_mobilefacenet_keeps_who_is_who_under_batch_statistics(sample_dir):
    """ArcFace at s=64 leaves its starting plateau only once a face's class centre is nearer to it than the others
    are, so the untrained network must not wash out its input. Under training-mode BatchNorm (what the first steps
    see), PReLU starting at slope 0.25 keeps the bundled ORL faces' identities 69-72 % nearest-class-mean separable
    at initialization (seeds 0-2); starting at 0 (a ReLU, Keras's default) gave 36-47 % over the same seeds."""
    import tensorflow as tf

    from arcface.data.preprocess import face_pixels, normalize

    files = sorted(sample_dir.glob("*/*/*.pgm"))
    _, labels = np.unique([f.parent.name for f in files], return_inverse=True)
    images = normalize(tf.stack([face_pixels(tf.io.read_file(str(f)), 112) for f in files]))
    for seed in range(2):
        keras.utils.set_random_seed(seed)
        model = get_backbone("MobileFaceNet", 112, 512)
        accuracy = _nearest_class_mean_accuracy(model(images, training=True).numpy(), labels)
        assert accuracy >= 0.6, f"seed {seed}: untrained embeddings are {accuracy:.0%} nearest-class-mean separable"
