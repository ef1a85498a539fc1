"""Export: every format is written, reloaded in its own runtime, and matches the Keras model on real faces."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from arcface import artifacts
from arcface import export as export_mod
from arcface.config import TrainConfig
from arcface.contracts import KFOLD_MEAN, EvaluationDir, EvaluationSummary
from arcface.export import ExportError, export, kfp_model_metadata

IMAGE_SIZE = 64
CENTER_CROP = 0.9
EVALUATION = EvaluationSummary(verification_accuracy=0.91, verification_accuracy_kind=KFOLD_MEAN, threshold=0.42,
                               auc=0.95, eer=0.1, genuine_pairs=300, impostor_pairs=300, flip_tta=True)


def make_model_dir(path: Path) -> Path:
    """A model folder laid out as training writes it, with a tiny untrained model."""
    from arcface.models import build_models

    config = TrainConfig(backbone="TinyFaceNet", image_size=IMAGE_SIZE, embedding_size=32, n_classes=4,
                         center_crop=CENTER_CROP)
    training_model, embedding_model = build_models(config)
    path.mkdir(parents=True, exist_ok=True)
    artifacts.save_keras(training_model, path / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, path / artifacts.EMBEDDING_MODEL_FILE)
    config.save(path / artifacts.CONFIG_FILE)
    artifacts.write_json(path / artifacts.METADATA_FILE, {
        "class_names": ["a", "b", "c", "d"], "manifest_sha256": "x", "image_size": IMAGE_SIZE,
        "embedding_size": 32, "center_crop": CENTER_CROP, "normalization": artifacts.NORMALIZATION,
        "epochs_completed": 3})
    return path


def sample_images(sample_dir: Path) -> list[str]:
    return sorted(str(p) for p in (sample_dir / "validation").rglob("*.pgm"))


# Tolerances of the independent parity check. Against the Keras model fed the same tensor, a float32 file
# computes the same graph in another runtime, so only summation order and fused kernels differ; float16
# weights change the numbers but not the direction. The bytes signature preprocesses in its graph while the
# reference preprocesses with Pillow + numpy: lossless files differ by a rare rounding step (one level at a
# few pixels), JPEGs by TF's and Pillow's decoders (about a level on average).
SAME_TENSOR_MAX_ABS_DIFF = 1e-4
FLOAT16_MIN_COSINE = 0.999
LOSSLESS_BYTES_MAX_ABS_DIFF = 2e-4  # measured: 3e-5 on the ORL sample
JPEG_BYTES_MIN_COSINE = 0.9995  # measured: 1 - 7.5e-5 on LFW


def reference(model_dir: Path, paths: list[str], pillow_input) -> tuple[np.ndarray, np.ndarray]:
    """The test's own reference: Pillow + numpy preprocessing (tests/conftest.py) into the Keras model."""
    model = artifacts.load_keras(model_dir / artifacts.EMBEDDING_MODEL_FILE)
    batch = np.stack([pillow_input(p, IMAGE_SIZE, CENTER_CROP) for p in paths])
    return np.asarray(model(batch, training=False)), batch


def run_each_file(out: Path, paths: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """Every exported file loaded in its own runtime; the SavedModel's bytes signature gets the files' bytes."""
    import onnxruntime as ort
    import tensorflow as tf

    saved = tf.saved_model.load(str(out / "saved_model"))
    encoded = tf.constant([Path(p).read_bytes() for p in paths])
    got = {"saved_model bytes": saved.signatures["serving_default"](images=encoded)["embedding"].numpy(),
           "saved_model tensor": saved.signatures["embed_tensor"](image=tf.constant(batch))["embedding"].numpy(),
           "keras": np.asarray(artifacts.load_keras(out / "model.keras")(batch, training=False))}
    for name in ("model.tflite", "model_float16.tflite"):
        interpreter = tf.lite.Interpreter(model_path=str(out / name))
        source = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(source["index"], list(batch.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], batch)
        interpreter.invoke()
        got[name] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got["onnx"] = session.run(None, {session.get_inputs()[0].name: batch})[0]
    return got


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_matches_reference(got: dict[str, np.ndarray], expected: np.ndarray, *, lossless: bool) -> None:
    for name, embeddings in got.items():
        assert embeddings.shape == expected.shape, name
        assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4), name
        if name == "model_float16.tflite":
            assert cosines(embeddings, expected).min() >= FLOAT16_MIN_COSINE, name
        elif name == "saved_model bytes" and not lossless:
            assert cosines(embeddings, expected).min() >= JPEG_BYTES_MIN_COSINE, name
        else:
            limit = LOSSLESS_BYTES_MAX_ABS_DIFF if name == "saved_model bytes" else SAME_TENSOR_MAX_ABS_DIFF
            assert np.abs(embeddings - expected).max() <= limit, name


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(model_dir, sample_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exported")
    metrics = out.parent / "metrics.json"
    EvaluationDir.write(out.parent, EVALUATION)
    card = export(model_dir, out, quantize="float16", metrics_path=str(metrics),
                  check_images=sample_images(sample_dir))
    return out, card


# ---------------------------------------------------------------------------------------------------
def test_every_format_is_written_with_a_model_card(exported):
    out, card = exported
    assert card["formats"] == ["saved_model", "keras", "tflite", "tflite_float16", "onnx"]
    for name in ("saved_model/saved_model.pb", "model.keras", "model.tflite", "model_float16.tflite",
                 "model.onnx", "model_card.json", "model_card.md"):
        assert (out / name).exists(), name
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")], "the staging folder was left behind"
    assert json.loads((out / "model_card.json").read_text())["formats"] == card["formats"]
    assert card["files"]["keras"]["sha256"] == hashlib.sha256((out / "model.keras").read_bytes()).hexdigest()
    assert card["files"]["onnx"]["bytes"] == (out / "model.onnx").stat().st_size
    assert card["source"]["manifest_sha256"] == "x"
    assert card["source"]["epochs"] == 3
    assert card["embedding_size"] == 32 and card["input"]["image_size"] == IMAGE_SIZE
    assert card["input"]["center_crop"] == CENTER_CROP
    assert card["threshold"] == 0.42 and card["evaluation"]["auc"] == 0.95
    assert card["onnx_opset"] == export_mod.ONNX_OPSET
    assert card["check_images"]["source"] == "given" and card["check_images"]["count"] == 30
    assert "tf2onnx" in card["framework_versions"]
    assert "threshold: 0.42" in (out / "model_card.md").read_text()


def test_every_file_in_its_runtime_matches_an_independent_reference_on_orl_faces(exported, model_dir, sample_dir,
                                                                                  pillow_input):
    out, card = exported
    paths = sample_images(sample_dir)
    expected, batch = reference(model_dir, paths, pillow_input)
    assert_matches_reference(run_each_file(out, paths, batch), expected, lossless=True)
    assert set(card["parity"]) == {"saved_model", "saved_model_bytes", "keras", "tflite", "tflite_float16", "onnx"}


def test_kfp_model_metadata(exported):
    _, card = exported
    meta = kfp_model_metadata(card)
    assert meta["formats"] == card["formats"] and meta["embedding_size"] == 32 and meta["input_size"] == 64
    assert meta["normalization"]["mean"] == 127.5 and meta["framework"].startswith("tensorflow ")
    json.dumps(meta)  # KFP metadata must be JSON


@pytest.mark.shared
def test_every_file_in_its_runtime_matches_an_independent_reference_on_orl_and_lfw(exported, model_dir,
                                                                                    shared_faces, pillow_input):
    """PGM (ORL, lossless) and JPEG (LFW) faces; see the tolerances above for what each comparison allows."""
    out, _ = exported
    orl = sorted(str(p) for p in (shared_faces / "orl_faces").rglob("*.pgm"))[:4]
    lfw = sorted(str(p) for p in (shared_faces / "lfw_deepfunneled").rglob("*.jpg"))[:4]
    assert len(orl) == len(lfw) == 4
    for paths, lossless in ((orl, True), (lfw, False)):
        expected, batch = reference(model_dir, paths, pillow_input)
        assert_matches_reference(run_each_file(out, paths, batch), expected, lossless=lossless)


def test_a_broken_export_fails_and_publishes_nothing(model_dir, sample_dir, tmp_path, monkeypatch):
    real = export_mod._run_tflite
    monkeypatch.setattr(export_mod, "_run_tflite", lambda path, batch: real(path, batch) + 0.01)
    (tmp_path / "previous.txt").write_text("an earlier export stays as it was")
    with pytest.raises(ExportError, match=r"tflite: largest \|difference\| .* > 0\.0001"):
        export(model_dir, tmp_path, formats=["tflite"], check_images=sample_images(sample_dir)[:4])
    assert sorted(os.listdir(tmp_path)) == ["previous.txt"]


def test_without_images_the_check_is_synthetic_and_says_so(model_dir, tmp_path):
    card = export(model_dir, tmp_path, formats=["keras"])
    assert card["check_images"]["source"] == "synthetic" and "synthetic" in card["check_images"]["note"]
    assert card["formats"] == ["keras"] and card["threshold"] is None
    again = export(model_dir, tmp_path, formats=["keras"])  # re-exporting into the same folder replaces it
    assert again["files"]["keras"]["sha256"] == hashlib.sha256((tmp_path / "model.keras").read_bytes()).hexdigest()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"formats": ["pb"]}, "unknown or no export format"),
    ({"formats": ["keras"], "quantize": "float16"}, "applies to TFLite only"),
    ({"formats": ["keras"], "quantize": "int4"}, "quantize='int4' is unknown"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        export(tmp_path / "no-model", tmp_path / "out", **kwargs)


def test_missing_onnx_packages_name_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` raise ImportError
    with pytest.raises(ExportError, match=r"pip install tf2onnx onnx onnxruntime"):
        export(tmp_path / "no-model", tmp_path / "out", formats=["onnx"])


def test_a_model_that_carries_code_is_refused(tmp_path):
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    folder = tmp_path / "run"
    folder.mkdir()
    model.save(folder / artifacts.EMBEDDING_MODEL_FILE)
    with pytest.raises(artifacts.ModelLoadError, match="refusing to load"):
        export(folder, tmp_path / "out", formats=["keras"])


def test_a_model_saved_under_mixed_bfloat16_exports_float32_files(sample_dir, tmp_path):
    """Layers saved computing in bfloat16 (by hand, or by a trainer that did not save float32 copies) are
    exported as a float32 graph: float32 inputs and outputs in every runtime, and the same embeddings."""
    import json as json_mod
    import zipfile

    import keras
    import onnxruntime as ort
    import tensorflow as tf

    from arcface.precision import computes_in_float32

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model_dir = make_model_dir(tmp_path / "bf16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with zipfile.ZipFile(model_dir / artifacts.EMBEDDING_MODEL_FILE) as saved:
        assert "mixed_bfloat16" in saved.read("config.json").decode(), "the file under test computes in bfloat16"

    out = tmp_path / "out"
    paths = sample_images(sample_dir)[:4]
    card = export(model_dir, out, formats=["saved_model", "keras", "tflite", "onnx"], check_images=paths)
    assert set(card["parity"]) == {"saved_model", "saved_model_bytes", "keras", "tflite", "onnx"}

    signature = tf.saved_model.load(str(out / "saved_model")).signatures["embed_tensor"]
    assert signature.structured_input_signature[1]["image"].dtype == tf.float32
    assert signature.structured_outputs["embedding"].dtype == tf.float32
    assert computes_in_float32(artifacts.load_keras(out / "model.keras"))
    with zipfile.ZipFile(out / "model.keras") as saved:
        assert "bfloat16" not in json_mod.dumps(json_mod.loads(saved.read("config.json")))
    interpreter = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
    assert [d["dtype"] for d in interpreter.get_input_details() + interpreter.get_output_details()] == [
        np.float32, np.float32]
    assert not any("bfloat16" in str(d.get("dtype")) for d in interpreter.get_tensor_details())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [t.type for t in session.get_inputs() + session.get_outputs()] == ["tensor(float)", "tensor(float)"]
