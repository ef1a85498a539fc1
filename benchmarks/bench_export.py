"""Embedding speed of each export format on this machine's CPU: Keras, SavedModel, TFLite, ONNX.

Builds the chosen backbone with untrained weights (speed does not depend on them), exports it with
``arcface.export.export`` (so every file is parity-checked first), then measures in one process:

* latency at batch 1: median over ``--runs`` calls after ``--warmup`` calls;
* throughput at ``--batch``: images per second, median of ``--throughput-runs`` calls.

Ratios are against Keras measured in the same run. Prints JSON; ``--out FILE`` also writes it.

    python benchmarks/bench_export.py                      # MobileFaceNet 112x112, all formats
    python benchmarks/bench_export.py --quick --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="MobileFaceNet")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--formats", default="keras,saved_model,tflite,onnx")
    p.add_argument("--runs", type=int, default=50, help="batch-1 calls timed (at least 20)")
    p.add_argument("--throughput-runs", type=int, default=10, help="batch calls timed (at least 5)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="TFLite/ONNX Runtime threads (0: every CPU)")
    p.add_argument("--quick", action="store_true", help="20 latency runs, 5 throughput runs, 2 warm-up calls")
    p.add_argument("--out", help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.throughput_runs, args.warmup = 20, 5, 2
    if args.runs < 20 or args.throughput_runs < 5:
        p.error("--runs must be >= 20 and --throughput-runs >= 5 for a median worth reporting")
    return args


# ---------------------------------------------------------------------------------------------------
# Runners: one callable per format, normalized float32 batch -> embeddings
# ---------------------------------------------------------------------------------------------------
def keras_runner(path: str) -> Runner:
    import tensorflow as tf

    from arcface.artifacts import load_keras

    model = load_keras(path)
    step = tf.function(lambda x: model(x, training=False), reduce_retracing=True)  # as arcface.embedding runs it
    return lambda x: step(tf.constant(x)).numpy()


def saved_model_runner(path: str) -> Runner:
    import tensorflow as tf

    from arcface.export import OUTPUT_KEY, TENSOR_SIGNATURE

    signature = tf.saved_model.load(path).signatures[TENSOR_SIGNATURE]
    return lambda x: signature(image=tf.constant(x))[OUTPUT_KEY].numpy()


def tflite_runner(path: str, threads: int) -> Runner:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the ai_edge_litert deprecation notice
        interpreter = tf.lite.Interpreter(model_path=path, num_threads=threads)
    source = interpreter.get_input_details()[0]["index"]
    shape: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        if list(x.shape) != shape:  # resizing reallocates; do it only when the batch size changes
            interpreter.resize_tensor_input(source, list(x.shape))
            interpreter.allocate_tensors()
            shape[:] = list(x.shape)
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def onnx_runner(path: str, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


# ---------------------------------------------------------------------------------------------------
def timed(run: Runner, x: np.ndarray, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run(x)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        seconds.append(time.perf_counter() - start)
    return seconds


def export_model(args: argparse.Namespace, folder: str, formats: list[str]) -> dict:
    from arcface import artifacts
    from arcface.config import TrainConfig
    from arcface.export import export
    from arcface.models import build_models

    config = TrainConfig(backbone=args.backbone, image_size=args.image_size, embedding_size=args.embedding_size,
                         n_classes=2)
    _, embedding_model = build_models(config)
    model_dir = os.path.join(folder, "run")
    os.makedirs(model_dir)
    artifacts.save_keras(embedding_model, os.path.join(model_dir, artifacts.EMBEDDING_MODEL_FILE))
    config.save(os.path.join(model_dir, artifacts.CONFIG_FILE))
    # Synthetic check images: parity is still verified, and the card says they were synthetic.
    return export(model_dir, os.path.join(folder, "exported"), formats=formats)


def benchmark(args: argparse.Namespace) -> dict:
    import keras
    import tensorflow as tf

    threads = args.threads or os.cpu_count() or 1
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if "keras" not in formats:
        formats.insert(0, "keras")  # the baseline of every ratio
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        card = export_model(args, folder, formats)
        export_seconds = time.perf_counter() - start
        out = os.path.join(folder, "exported")
        makers: dict[str, Callable[[], Runner]] = {
            "keras": lambda: keras_runner(os.path.join(out, "model.keras")),
            "saved_model": lambda: saved_model_runner(os.path.join(out, "saved_model")),
            "tflite": lambda: tflite_runner(os.path.join(out, "model.tflite"), threads),
            "onnx": lambda: onnx_runner(os.path.join(out, "model.onnx"), threads),
        }
        rng = np.random.default_rng(0)
        one = rng.uniform(-1, 1, (1, args.image_size, args.image_size, 3)).astype(np.float32)
        batch = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
        latency_ms, throughput = {}, {}
        for name in formats:
            run = makers[name]()
            latency_ms[name] = 1000 * statistics.median(timed(run, one, args.runs, args.warmup))
            per_batch = statistics.median(timed(run, batch, args.throughput_runs, max(1, args.warmup // 2)))
            throughput[name] = args.batch / per_batch
            print(f"{name:12s} batch 1: {latency_ms[name]:8.2f} ms   batch {args.batch}: "
                  f"{throughput[name]:8.1f} images/s", file=sys.stderr)
    versions = card["framework_versions"]
    return {
        "backbone": args.backbone, "image_size": args.image_size, "embedding_size": args.embedding_size,
        "weights": "untrained (speed does not depend on the values)",
        "cpu_count": os.cpu_count(), "runtime_threads": threads, "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "versions": {**versions, "tensorflow": tf.__version__, "keras": keras.__version__},
        "settings": {"latency_runs": args.runs, "throughput_runs": args.throughput_runs, "batch": args.batch,
                     "warmup": args.warmup},
        "export_seconds": export_seconds,
        "file_bytes": {name: card["files"][name]["bytes"] for name in formats},
        "parity_max_abs_diff": {name: card["parity"][name]["max_abs_diff"] for name in formats},
        "latency_batch1_ms": latency_ms,
        f"throughput_batch{args.batch}_images_per_s": throughput,
        "latency_speedup_vs_keras": {n: latency_ms["keras"] / v for n, v in latency_ms.items()},
        "throughput_ratio_vs_keras": {n: v / throughput["keras"] for n, v in throughput.items()},
        "note": ("Keras runs through a tf.function (as arcface.embedding does); TFLite and ONNX Runtime use "
                 "runtime_threads intra-op threads; all on the CPU, one process, one format at a time."),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = benchmark(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
