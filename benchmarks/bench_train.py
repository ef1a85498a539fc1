"""Training speed: images/s per backbone, and Partial-FC step time with 1e3 vs 1e6 identities.

    python benchmarks/bench_train.py --out benchmarks/results/train_cpu.json
    python benchmarks/bench_train.py --backbones ResNet50 --batch_size 128 --mixed_precision   # on a GPU

Each figure is the median over --steps timed steps after --warmup untimed ones, on synthetic normalized images
(the input pipeline is measured separately by bench_data.py, so this isolates the model's consumption).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _trainer(config):
    from arcface.data import Manifest, ManifestRow
    from arcface.train import Trainer

    # The trainer only needs class names and a training-set size from the manifest to build its step.
    rows = [ManifestRow(path=f"{i}.jpg", identity=f"id{i % config.n_classes}", split="train", width=112,
                        height=112, sha256=f"{i:064x}") for i in range(config.batch_size)]
    manifest = Manifest(rows=rows, roots={"train": "/nonexistent", "validation": "/nonexistent"},
                        class_names=[f"id{i}" for i in range(config.n_classes)])
    return Trainer(config, manifest, verbose=0)


def time_steps(config, warmup: int, steps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    trainer = _trainer(config)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (config.batch_size, config.image_size, config.image_size, 3)),
                         tf.float32)
    labels = tf.constant(rng.integers(0, config.n_classes, config.batch_size), tf.int32)
    for _ in range(warmup):
        float(trainer._train_step(images, labels)[0])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        float(trainer._train_step(images, labels)[0])  # float() waits for the step to finish
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"median_step_s": median, "images_per_second": config.batch_size / median,
            "steps_timed": steps, "min_step_s": min(times), "max_step_s": max(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="MobileFaceNet,ResNet18,ResNet34,ResNet50,ResNet100,VGG16")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mixed_precision", action="store_true")
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--partial_fc_backbone", default="TinyFaceNet",
                        help="small backbone for the 1e3 vs 1e6 identities comparison ('' to skip)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from arcface import __version__
    from arcface.config import TrainConfig

    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
              else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})")
    result = {"benchmark": "train", "package_version": __version__, "tensorflow": tf.__version__,
              "device": device, "image_size": args.image_size, "batch_size": args.batch_size,
              "mixed_precision": args.mixed_precision, "jit_compile": args.jit_compile, "backbones": {}}
    base = dict(n_classes=1000, image_size=args.image_size, batch_size=args.batch_size, dropout=0.0,
                mixed_precision=args.mixed_precision, jit_compile=args.jit_compile, save_path="/tmp/arcface-bench",
                warmup_epochs=0.0)
    for name in filter(None, args.backbones.split(",")):
        figures = time_steps(TrainConfig(backbone=name, **base), args.warmup, args.steps)
        result["backbones"][name] = figures
        print(f"{name}: {figures['images_per_second']:.1f} img/s", file=sys.stderr)

    if args.partial_fc_backbone:
        pfc = {}
        for n_classes in (1_000, 1_000_000):
            config = TrainConfig(**{**base, "n_classes": n_classes, "backbone": args.partial_fc_backbone,
                                    "sample_rate": 0.1})
            pfc[str(n_classes)] = time_steps(config, args.warmup, args.steps)
            print(f"Partial-FC {n_classes} identities: {pfc[str(n_classes)]['median_step_s'] * 1e3:.1f} ms/step",
                  file=sys.stderr)
        pfc["ratio_1e6_vs_1e3"] = pfc["1000000"]["median_step_s"] / pfc["1000"]["median_step_s"]
        result["partial_fc"] = {"backbone": args.partial_fc_backbone, "sample_rate": 0.1, **pfc}

    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
