"""Export a trained embedding model as SavedModel, .keras, TFLite and ONNX, each checked against Keras.

``export(model_dir, output_dir)`` writes::

    saved_model/          two signatures: 'serving_default' (encoded image bytes -> embedding) and
                          'embed_tensor' (normalized float32 [N, S, S, 3] -> embedding)
    model.keras           the embedding model, loadable in safe mode
    model.tflite          float32 (plus model_float16.tflite / model_dynamic.tflite with ``quantize``)
    model.onnx            via tf2onnx, opset :data:`ONNX_OPSET`
    model_card.json/.md   what the model is, where it came from, how well it did, and how each file was checked

Every file is reloaded in its own runtime and compared with the Keras model on real face images before it is
published; the whole export is staged in ``output_dir/.tmp-export-*`` and moved into place only when every
check passed, so a failed export leaves ``output_dir`` as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface import __version__, artifacts
from arcface.choices import EXPORT_FORMATS, QUANTIZE
from arcface.contracts import EvaluationDir, ExportDir, ManifestDir, ModelDir
from arcface.model_input import ModelInput, read_model_input

log = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS
ONNX_OPSET = 17

# The folder's file names are defined by arcface.contracts.ExportDir.
SAVED_MODEL_DIR, KERAS_FILE, TFLITE_FILE = ExportDir.SAVED_MODEL_DIR, ExportDir.KERAS_FILE, ExportDir.TFLITE_FILE
ONNX_FILE, CARD_JSON, CARD_MD = ExportDir.ONNX_FILE, ExportDir.CARD_JSON, ExportDir.CARD_MD
QUANTIZED_TFLITE_FILES = ExportDir.QUANTIZED_TFLITE_FILES

SERVING_SIGNATURE = "serving_default"
TENSOR_SIGNATURE = "embed_tensor"
OUTPUT_KEY = "embedding"

# A float32 re-export computes the same graph, so only rounding differences are allowed; a quantized model
# changes the weights, so only the direction of the embedding (what cosine scores use) is checked.
FLOAT32_MAX_ABS_DIFF = 1e-4
QUANTIZED_MIN_COSINE = 0.999
MAX_CHECK_IMAGES = 32  # enough to catch a wrong graph; more only makes the export slower
SYNTHETIC_CHECK_IMAGES = 8
EXPORT_EXTRA = "pip install tf2onnx onnx onnxruntime"  # part of a normal install; missing only if removed


class ExportError(RuntimeError):
    """An export could not be written or does not compute what the Keras model computes."""


# ---------------------------------------------------------------------------------------------------
# The serving module: the graph that goes into the SavedModel, TFLite and ONNX
# ---------------------------------------------------------------------------------------------------
def build_serving_module(embedding_model, image_size: int, center_crop: float):
    """A ``tf.Module`` with the two serving functions; the bytes one preprocesses as training does
    (``model_input``, EXIF orientation read from the bytes inside the graph)."""
    import tensorflow as tf

    from arcface.data.preprocess import model_input

    class EmbeddingModule(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="arcface_embedding")
            self.model = embedding_model  # tracked, so its variables are saved with the module

        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")])
        def embed_tensor(self, image):
            return {OUTPUT_KEY: self.model(image, training=False)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_bytes(self, images):
            spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)
            batch = tf.map_fn(lambda contents: model_input(contents, image_size, center_crop), images,
                              fn_output_signature=spec)
            return self.embed_tensor(batch)

    return EmbeddingModule()


# ---------------------------------------------------------------------------------------------------
# Writers: one per format, each writes into the staging folder and returns the files it wrote
# ---------------------------------------------------------------------------------------------------
def _write_saved_model(module, staging: str) -> list[str]:
    import tensorflow as tf

    signatures = {SERVING_SIGNATURE: module.serve_bytes.get_concrete_function(),
                  TENSOR_SIGNATURE: module.embed_tensor.get_concrete_function()}
    tf.saved_model.save(module, os.path.join(staging, SAVED_MODEL_DIR), signatures=signatures)
    return [SAVED_MODEL_DIR]


def _write_keras(model, staging: str) -> list[str]:
    artifacts.save_keras(model, os.path.join(staging, KERAS_FILE))
    return [KERAS_FILE]


def _tflite_bytes(model, quantize: str) -> bytes:
    import tensorflow as tf

    # from_keras_model, not from_concrete_functions/from_saved_model of the serving module: with Keras 3
    # variables those two leave READ_VARIABLE ops unfrozen, and the .tflite then returns NaN (TF 2.21).
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations
    # Keras prints the whole intermediate signature (one line per variable) to stdout; keep it for debugging.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = converter.convert()
    log.debug("TFLite conversion printed:\n%s", printed.getvalue())
    return result


def _write_tflite(model, staging: str, quantize: str) -> list[str]:
    written = [TFLITE_FILE]
    with open(os.path.join(staging, TFLITE_FILE), "wb") as f:
        f.write(_tflite_bytes(model, "none"))
    if quantize != "none":
        name = QUANTIZED_TFLITE_FILES[quantize]
        with open(os.path.join(staging, name), "wb") as f:
            f.write(_tflite_bytes(model, quantize))
        written.append(name)
    return written


def _require_onnx() -> None:
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ExportError(f"the 'onnx' format needs tf2onnx, onnx and onnxruntime ({e}); install them with "
                          f"`{EXPORT_EXTRA}`, or leave 'onnx' out of formats") from None


def _write_onnx(module, staging: str) -> list[str]:
    import tf2onnx

    function = module.embed_tensor
    tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=ONNX_OPSET,
                                  output_path=os.path.join(staging, ONNX_FILE))
    return [ONNX_FILE]


# ---------------------------------------------------------------------------------------------------
# Runners: reload each file in its own runtime (nothing shared with the Keras model in memory)
# ---------------------------------------------------------------------------------------------------
def _run_saved_model_bytes(path: str, encoded: Sequence[bytes]) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    out = loaded.signatures[SERVING_SIGNATURE](images=tf.constant(list(encoded), dtype=tf.string))
    return out[OUTPUT_KEY].numpy()


def _run_saved_model_tensor(path: str, batch: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    return loaded.signatures[TENSOR_SIGNATURE](image=tf.constant(batch))[OUTPUT_KEY].numpy()


def _run_keras(path: str, batch: np.ndarray) -> np.ndarray:
    model = artifacts.load_keras(path)  # safe mode, as every consumer will load it
    return np.asarray(model(batch, training=False))


def _run_tflite(path: str, batch: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    with warnings.catch_warnings():  # "deprecated, use ai_edge_litert": still the interpreter TF 2.21 ships
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=path)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def _run_onnx(path: str, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


# ---------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------
def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-12)
    return np.sum(a64 * b64, axis=1) / norms


def check_parity(name: str, got: np.ndarray, expected: np.ndarray, *, quantized: bool = False) -> dict[str, Any]:
    """Compare one export's output with the Keras model's; raise :class:`ExportError` beyond the limit."""
    if got.shape != expected.shape:
        raise ExportError(f"{name}: output shape {got.shape} differs from the Keras model's {expected.shape}; "
                          "the export is broken, rerun it and report a bug if it persists")
    max_diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    min_cos = float(np.min(_cosines(got, expected))) if got.size else 1.0
    figures = {"images": int(got.shape[0]), "max_abs_diff": max_diff, "min_cosine": min_cos}
    if quantized:
        figures.update(check="min_cosine", limit=QUANTIZED_MIN_COSINE)
        if not min_cos >= QUANTIZED_MIN_COSINE:  # 'not >=' also catches NaN
            raise ExportError(f"{name}: the quantized model's embeddings drift from the Keras model's: lowest "
                              f"cosine {min_cos:.6f} < {QUANTIZED_MIN_COSINE} over {got.shape[0]} images; "
                              "export without this quantization (quantize='none') or use 'float16'")
    else:
        figures.update(check="max_abs_diff", limit=FLOAT32_MAX_ABS_DIFF)
        if not max_diff <= FLOAT32_MAX_ABS_DIFF:
            raise ExportError(f"{name}: largest |difference| from the Keras model is {max_diff:.3g} > "
                              f"{FLOAT32_MAX_ABS_DIFF:g} over {got.shape[0]} images; the converted graph does "
                              "not compute what the model does. Do not ship this file; report the backbone and "
                              "the converter versions in the model card")
    return figures


# ---------------------------------------------------------------------------------------------------
# Check images: real faces when we have them, a stated synthetic batch when we do not
# ---------------------------------------------------------------------------------------------------
def _manifest_images(model_dir: str, metadata: dict[str, Any]) -> list[str]:
    """Validation images of the manifest the metadata names (``manifest_path``/``manifest``), if readable."""
    name = metadata.get("manifest_path") or metadata.get("manifest")
    if not isinstance(name, str):
        return []
    path = name if os.path.isabs(name) else os.path.join(model_dir, name)
    if not os.path.isfile(path):
        return []
    paths = ManifestDir.read(path).absolute_paths("validation")
    return [p for p in paths if os.path.isfile(p)]


def _spread(paths: list[str], limit: int) -> list[str]:
    """At most ``limit`` paths spread over the list (the first ones are often all one identity)."""
    if len(paths) <= limit:
        return list(paths)
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]


def _synthetic_encoded(image_size: int) -> list[bytes]:
    """Deterministic smooth PNG images, so the bytes signature is still exercised without real faces."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    side = max(image_size, 32) + 8
    encoded = []
    for _ in range(SYNTHETIC_CHECK_IMAGES):
        coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], [side, side], method="bicubic")[0]
        encoded.append(tf.io.encode_png(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)).numpy())
    return encoded


def _read_check_images(paths: Sequence[str]) -> list[bytes]:
    encoded = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                encoded.append(f.read())
        except OSError as e:
            raise ExportError(f"check image {path} cannot be read ({e.strerror}); pass existing face images "
                              "as check_images") from None
    return encoded


def _decode_batch(encoded: Sequence[bytes], names: Sequence[str], image_size: int, center_crop: float) -> np.ndarray:
    """``model_input`` (training's preprocessing) eagerly, image by image, so a bad file is named."""
    import tensorflow as tf

    from arcface.data.preprocess import model_input

    images = []
    for contents, name in zip(encoded, names, strict=True):
        try:
            images.append(model_input(tf.constant(contents), image_size, center_crop).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            raise ExportError(f"check image {name} is not a readable image ({e.message.splitlines()[0]}); "
                              "pass JPEG, PNG, GIF, BMP or binary PGM/PPM face images as check_images") from None
    return np.stack(images).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------
def _describe_file(root: str, name: str) -> dict[str, Any]:
    """Size and sha256 of a file; of a folder, the total size and the hash of its sorted (path, hash) list."""
    path = os.path.join(root, name)
    if os.path.isfile(path):
        return {"path": name, "bytes": os.path.getsize(path), "sha256": artifacts.file_sha256(path)}
    listing, total = hashlib.sha256(), 0
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for file in sorted(files):
            full = os.path.join(folder, file)
            total += os.path.getsize(full)
            listing.update(f"{os.path.relpath(full, path)}\0{artifacts.file_sha256(full)}\n".encode())
    return {"path": name + "/", "bytes": total, "sha256": listing.hexdigest(),
            "sha256_of": "sorted lines '<relative path>\\0<file sha256>'"}


def _card_evaluation(metrics_path: str | os.PathLike | None) -> dict[str, Any]:
    """The evaluation's summary for the model card, and which metrics.json it came from; {} without one."""
    if not metrics_path:
        return {}
    return {**EvaluationDir.read(metrics_path).to_dict(),
            "source": os.path.abspath(EvaluationDir.metrics_file(metrics_path))}


def _framework_versions(formats: Sequence[str]) -> dict[str, str]:
    import keras
    import tensorflow as tf

    versions = {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
                "numpy": np.__version__}
    if "onnx" in formats:
        import onnx
        import onnxruntime
        import tf2onnx

        versions.update(tf2onnx=tf2onnx.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


def kfp_model_metadata(card: dict[str, Any]) -> dict[str, Any]:
    """The few fields the KFP component puts on its ``Model`` artifact (flat, JSON-serializable)."""
    versions = card["framework_versions"]
    return {"framework": f"tensorflow {versions['tensorflow']} / keras {versions['keras']}",
            "formats": list(card["formats"]), "embedding_size": card["embedding_size"],
            "input_size": card["input"]["image_size"], "normalization": dict(card["input"]["normalization"])}


def _parity_cells(parity: dict[str, Any] | None) -> str:
    if not parity:
        return " | | |"
    measured = parity[parity["check"]]
    shown = f"{measured:.6f}" if parity["check"] == "min_cosine" else f"{measured:.3g}"
    return f"{parity['check']} | {shown} | {parity['limit']} |"


def input_contract(alignment: dict[str, Any], image_size: int) -> str:
    """What every signature expects, in words: an aligned crop, or any photo of a face."""
    if alignment.get("method", "none") == "none":
        return ("raw image: the model was trained on whole images (centre-cropped and resized), so feed face "
                "images framed as the training images were")
    return (f"aligned face crop: the model was trained on {alignment.get('method')} face crops warped onto the "
            f"ArcFace 5-point template at {alignment.get('image_size', image_size)}x"
            f"{alignment.get('image_size', image_size)}; the signatures do not detect faces, so align photos "
            "first (arcface embed/compare/search, the server and the evaluation do)")


def _started_from_text(started: dict[str, Any] | None) -> str:
    if not started:
        return "random weights (trained from scratch)"
    where = (f"version {started['version']} of the model store `{started['store']}`" if "version" in started
             else f"`{started['path']}`")
    return f"{where} (sha256 `{started['sha256'][:16]}...`)"


def render_card_markdown(card: dict[str, Any]) -> str:
    evaluation = card["evaluation"]
    lines = [f"# Model card: ArcFace {card['config'].get('backbone', '')} face embedding", "",
             f"Created {card['created']} by arcface {card['package_version']}.", "",
             "## Use", "",
             f"Input: RGB face crop, center crop {card['input']['center_crop']} of the shorter side, resized to "
             f"{card['input']['image_size']}x{card['input']['image_size']}, normalized as "
             f"(x - {card['input']['normalization']['mean']}) * {card['input']['normalization']['scale']}. "
             f"Output: a unit-length {card['embedding_size']}-d embedding; the dot product of two is their "
             "cosine similarity.", "",
             f"Input contract: {card['input'].get('contract', 'raw image')}.", "",
             f"- SavedModel `{SERVING_SIGNATURE}`: `images` (tf.string [N], encoded JPEG/PNG/GIF/BMP/PGM) -> "
             f"`{OUTPUT_KEY}`; decoding and preprocessing are inside the graph.",
             f"- SavedModel `{TENSOR_SIGNATURE}`, TFLite, ONNX, .keras: normalized float32 [N, S, S, 3] -> "
             f"`{OUTPUT_KEY}`.", "",
             "## Evaluation", ""]
    if evaluation:
        lines += [f"- {k}: {v}" for k, v in evaluation.items()]
        if evaluation.get("threshold") is not None:
            lines += ["", f"Same person when similarity >= {evaluation['threshold']} (chosen on the evaluation "
                      f"pairs with flip_tta={evaluation.get('flip_tta')})."]
    else:
        lines.append("No evaluation metrics were given to the export (no verification threshold).")
    lines += ["", "## Files and parity with the Keras model", "",
              f"Checked on {card['check_images']['count']} {card['check_images']['source']} images. "
              f"{card['check_images'].get('note', '')}".rstrip(), "",
              "| format | file | bytes | sha256 | check | measured | limit |",
              "|---|---|---:|---|---|---:|---:|"]
    for name in card["formats"]:
        file = card["files"][name]
        lines.append(f"| {name} | `{file['path']}` | {file['bytes']} | `{file['sha256'][:16]}...` | "
                     + _parity_cells(card["parity"].get(name)))
    for key, parity in card["parity"].items():
        if key not in card["files"]:  # the SavedModel's bytes signature: same file, a second check
            lines.append(f"| {key} | `{SAVED_MODEL_DIR}/` {SERVING_SIGNATURE} | | | " + _parity_cells(parity))
    lines += ["", "## Provenance", "",
              f"- model folder: `{card['source']['model_dir']}`",
              f"- training manifest sha256: `{card['source']['manifest_sha256']}`",
              f"- started from: {_started_from_text(card['source'].get('started_from'))}",
              f"- ONNX opset: {card.get('onnx_opset', 'n/a')}",
              "- frameworks: " + ", ".join(f"{k} {v}" for k, v in card["framework_versions"].items()), "",
              "## Training configuration", "", "```json", json.dumps(card["config"], indent=2), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------
def _check_arguments(formats: Sequence[str], quantize: str) -> list[str]:
    formats = [f.strip() for f in formats if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown or no export format(s) {unknown or formats!r}; choose from {', '.join(FORMATS)}")
    if quantize not in QUANTIZE:
        raise ExportError(f"quantize={quantize!r} is unknown; choose one of {', '.join(QUANTIZE)}")
    if quantize != "none" and "tflite" not in formats:
        raise ExportError(f"quantize={quantize!r} applies to TFLite only; add 'tflite' to formats or use "
                          "quantize='none'")
    if "onnx" in formats:
        _require_onnx()
    return list(dict.fromkeys(formats))  # keep the order, drop repeats


def _publish(staging: str, output_dir: str, names: Sequence[str]) -> None:
    """Move the checked files from the staging folder into place; the model card goes last."""
    for name in [*names, CARD_MD, CARD_JSON]:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)  # a folder cannot be renamed onto a non-empty one
        os.replace(os.path.join(staging, name), target)


def _parity_images(check_images: list[str] | None, model_dir: str, metadata: dict[str, Any],
                   image_size: int) -> tuple[str, list[str], list[bytes]]:
    """The images the exports are compared on: where they come from, their names and their encoded bytes."""
    if check_images:
        names = _spread([str(p) for p in check_images], MAX_CHECK_IMAGES)
        return "given", names, _read_check_images(names)
    if names := _spread(_manifest_images(model_dir, metadata), MAX_CHECK_IMAGES):
        return "manifest validation", names, _read_check_images(names)
    encoded = _synthetic_encoded(image_size)
    names = [f"synthetic-{i}.png" for i in range(len(encoded))]
    log.warning("export: no check images given and no manifest found; checking parity on %d synthetic "
                "images only (pass check_images=[face images] for a real check)", len(encoded))
    return "synthetic", names, encoded


def _write_and_check(formats: Sequence[str], module, model, staging: str, quantize: str, batch, encoded,
                     expected: np.ndarray) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Each format written into ``staging`` and checked against the Keras model: its files, and the parity."""
    files: dict[str, list[str]] = {}
    parity: dict[str, dict[str, Any]] = {}
    for name in formats:
        start = time.perf_counter()
        files[name] = _write_format(name, module, model, staging, quantize)
        written = time.perf_counter()
        try:
            parity.update(_check_format(name, staging, quantize, batch, encoded, expected))
        except ExportError:
            raise
        except Exception as e:  # the file does not even load or run in its own runtime
            raise ExportError(f"{name}: the written file fails to load or run in its runtime "
                              f"({type(e).__name__}: {e}); leave '{name}' out of formats to export the "
                              "others, and report the backbone and versions") from e
        log.info("export: %s written in %.1f s, checked in %.1f s", name, written - start,
                 time.perf_counter() - written)
    return files, parity


def export(model_dir: str | os.PathLike, output_dir: str | os.PathLike, *, formats: Sequence[str] = FORMATS,
           quantize: str = "none", metrics_path: str | None = None,
           check_images: list[str] | None = None) -> dict[str, Any]:
    """Export the embedding model of ``model_dir`` into ``output_dir``; return the model card.

    Args:
        model_dir: a training run's save_path (or a folder holding ``embedding_model.keras``).
        formats: any of :data:`FORMATS`.
        quantize: 'float16' or 'dynamic' adds a quantized TFLite file next to the float32 one.
        metrics_path: the evaluation step's output folder or its ``metrics.json``; its summary (headline
            numbers, verification threshold) goes into the model card.
        check_images: face images the exports are compared on (at most :data:`MAX_CHECK_IMAGES`, spread
            over the list). Without them, the manifest's validation images if the metadata names a readable
            manifest, else a synthetic batch (the card says which).

    Raises:
        ExportError: a format is unknown or its packages are missing, or an export differs from the Keras
            model beyond the limits; nothing is published then.
    """
    model_dir, output_dir = str(model_dir), str(output_dir)
    formats = _check_arguments(formats, quantize)
    evaluation = _card_evaluation(metrics_path)
    trained = artifacts.load_model_dir(model_dir)
    model, metadata = trained.embedding_model, trained.metadata
    model_input = read_model_input(model_dir if os.path.isdir(model_dir) else os.path.dirname(model_dir),
                                   trained.image_size, trained.config.center_crop)
    image_size, center_crop = model_input.image_size, model_input.center_crop

    check_source, names, encoded = _parity_images(check_images, model_dir, metadata, image_size)
    batch = _decode_batch(encoded, names, image_size, center_crop)
    expected = np.asarray(model(batch, training=False)).astype(np.float32)

    os.makedirs(output_dir, exist_ok=True)
    staging = os.path.join(output_dir, f".tmp-export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        module = build_serving_module(model, image_size, center_crop)
        files, parity = _write_and_check(formats, module, model, staging, quantize, batch, encoded, expected)
        published = [n for name in formats for n in files[name]]
        if os.path.isfile(os.path.join(model_dir, ModelDir.HEAD_FILE)):  # the head's rows, for a warm start
            shutil.copy2(os.path.join(model_dir, ModelDir.HEAD_FILE), os.path.join(staging, ModelDir.HEAD_FILE))
            published.append(ModelDir.HEAD_FILE)
        card = _model_card(trained, model_dir, formats, quantize, staging, parity, evaluation,
                           check_source, names, model_input)
        card = ExportDir.write_card(staging, card, render_card_markdown(card))
        _publish(staging, output_dir, published)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card


def _write_format(name: str, module, model, staging: str, quantize: str) -> list[str]:
    """Write one format into the staging folder; a converter failure becomes an ExportError naming it."""
    try:
        if name == "saved_model":
            return _write_saved_model(module, staging)
        if name == "keras":
            return _write_keras(model, staging)
        if name == "tflite":
            return _write_tflite(model, staging, quantize)
        return _write_onnx(module, staging)
    except Exception as e:
        raise ExportError(f"{name}: writing the export failed ({type(e).__name__}: {e}); leave '{name}' out of "
                          "formats to export the others, and report the backbone and versions") from e


def _check_format(name: str, staging: str, quantize: str, batch: np.ndarray, encoded: Sequence[bytes],
                  expected: np.ndarray) -> dict[str, dict[str, Any]]:
    """Reload one written format in its own runtime and compare it with the Keras model's embeddings."""
    if name == "saved_model":
        path = os.path.join(staging, SAVED_MODEL_DIR)
        bytes_name = f"saved_model {SERVING_SIGNATURE} (encoded images)"
        return {"saved_model": check_parity(f"saved_model {TENSOR_SIGNATURE}",
                                            _run_saved_model_tensor(path, batch), expected),
                "saved_model_bytes": check_parity(bytes_name, _run_saved_model_bytes(path, encoded), expected)}
    if name == "keras":
        return {"keras": check_parity("keras", _run_keras(os.path.join(staging, KERAS_FILE), batch), expected)}
    if name == "onnx":
        return {"onnx": check_parity("onnx", _run_onnx(os.path.join(staging, ONNX_FILE), batch), expected)}
    figures = {"tflite": check_parity("tflite", _run_tflite(os.path.join(staging, TFLITE_FILE), batch), expected)}
    if quantize != "none":
        quantized = f"tflite_{quantize}"
        got = _run_tflite(os.path.join(staging, QUANTIZED_TFLITE_FILES[quantize]), batch)
        figures[quantized] = check_parity(quantized, got, expected, quantized=True)
    return figures


def _format_files(formats: Sequence[str], quantize: str) -> dict[str, str]:
    """Card format name -> file name, quantized TFLite listed as its own format."""
    names = {"saved_model": SAVED_MODEL_DIR, "keras": KERAS_FILE, "tflite": TFLITE_FILE, "onnx": ONNX_FILE}
    out: dict[str, str] = {}
    for name in formats:
        out[name] = names[name]
        if name == "tflite" and quantize != "none":
            out[f"tflite_{quantize}"] = QUANTIZED_TFLITE_FILES[quantize]
    return out


def _model_card(trained, model_dir: str, formats: Sequence[str], quantize: str, staging: str,
                parity: dict[str, dict[str, Any]], evaluation: dict[str, Any],
                check_source: str, check_names: Sequence[str], model_input: ModelInput) -> dict[str, Any]:
    format_files = _format_files(formats, quantize)
    check_images: dict[str, Any] = {"source": check_source, "count": len(check_names)}
    if check_source == "synthetic":
        check_images["note"] = ("No face images were available: parity was measured on synthetic images only; "
                                "pass check_images to measure it on faces.")
    else:
        check_images["files"] = [os.path.basename(n) for n in check_names]
    metadata = trained.metadata
    alignment = metadata.get("alignment") or {"method": model_input.alignment}
    image_size = model_input.image_size
    # The threshold is the given evaluation's, and holds for embeddings computed as it computed them.
    model_input = dataclasses.replace(model_input, threshold=evaluation.get("threshold"),
                                      flip_tta=bool(evaluation.get("flip_tta", False)))
    return {
        "name": f"arcface-{trained.config.backbone}-{trained.config.embedding_size}d",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "framework_versions": _framework_versions(formats),
        "source": {"model_dir": os.path.abspath(model_dir), "manifest_sha256": metadata.get("manifest_sha256"),
                   "class_names": len(metadata.get("class_names", [])), "epochs": metadata.get("epochs_completed"),
                   # what training started from (arcface.warm_start): the store version, or path and sha256
                   "started_from": metadata.get("started_from")},
        "config": trained.config.to_dict(),
        # The alignment the model was trained with: `arcface embed/compare/search` and the evaluation of a
        # pairs file follow it; the serving graph does not detect faces, so its input contract says so.
        "alignment": alignment,
        # What the model expects (arcface.model_input.ModelInput), and what its signatures take, in words.
        "input": {**model_input.to_dict(), "channels": 3, "contract": input_contract(alignment, image_size),
                  "signatures": {SERVING_SIGNATURE: "images: tf.string [N] encoded image files",
                                 TENSOR_SIGNATURE: f"image: float32 [N, {image_size}, {image_size}, 3] normalized"},
                  "output": f"{OUTPUT_KEY}: float32 [N, {int(trained.embedding_model.output_shape[-1])}], unit length"},
        "embedding_size": int(trained.embedding_model.output_shape[-1]),
        "evaluation": evaluation,
        "threshold": evaluation.get("threshold"),
        "formats": list(format_files),
        "files": {name: _describe_file(staging, file) for name, file in format_files.items()},
        "quantize": quantize,
        "onnx_opset": ONNX_OPSET if "onnx" in formats else None,
        "parity": parity,
        "check_images": check_images,
    }
