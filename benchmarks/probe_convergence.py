"""Does ArcFace at the paper's scale (s=64, m=0.5) leave its plateau, and how soon? Short probes, one variant each.

    python benchmarks/probe_convergence.py --variants exact,relu_start --init_stats \
        --out benchmarks/results/convergence_probes_112.json
    python benchmarks/probe_convergence.py --dump_npz /tmp/probe/train112.npz   # the images, for reference_probe_torch.py

Data: the training identities of bench_quality.py's LFW split (seed 42: 171 identities, 2,157 images), the LFW
preset (configs/lfw_cpu.yaml: MobileFaceNet, SGD lr 0.1 momentum 0.9, weight decay 5e-4, batch 64) at s=64 and
--image_size (112 by default: the reference MobileFaceNet's global depthwise conv is 7x7, so it runs at 112 only).
Each "epoch" is capped at --window steps, so the history gives the mean cross-entropy and training accuracy (from
the cosines, before the step's update) of every window of steps: the loss at steps 25, 50, ... The learning rate
is constant after a warm-up of --warmup_steps (36 steps: the preset's one epoch), as in the first part of the real
run, whose cosine decay has barely begun by then. With s=64 and m=0.5 the loss starts near 30.7 + ln(classes) =
35.8 (the true class's logit is s*cos(pi/2 + 0.5) = -30.7 while the others are near 0) and stays there until the
true class's cosine grows.

--init_stats also reports, per variant, how separable the untrained network's embeddings are (leave-one-out
nearest-class-mean accuracy under training-mode BatchNorm, batches of 64): what the first steps start from.

Variants (see VARIANTS): config overrides (flip_only is `jitter: false`, the reference's augmentation), and one
setting the library no longer offers, patched in here to show what it changed: relu_start (every PReLU slope
starting at 0, Keras's default and this library's before the probes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

VARIANTS = {
    "exact": {},
    "relu_start": {"relu_start": True},
    "straight_through": {"margin_gradient": "straight_through"},
    "backbone_clip5": {"backbone_clipnorm": 5.0},
    "clip5_straight_through": {"backbone_clipnorm": 5.0, "margin_gradient": "straight_through"},
    "flip_only": {"jitter": False},
    "reference_like": {"backbone_clipnorm": 5.0, "margin_gradient": "straight_through", "jitter": False},
    "reference_like_relu_start": {"backbone_clipnorm": 5.0, "margin_gradient": "straight_through", "jitter": False,
                                  "relu_start": True},
}


@contextlib.contextmanager
def relu_start(active: bool):
    """Every PReLU slope of the backbone starting at 0 (Keras's default), while active; the library's start after."""
    import keras
    import tensorflow as tf

    import arcface.models as models

    build = models.get_backbone

    def built_with_relu_start(*args, **kwargs):
        model = build(*args, **kwargs)
        for layer in model.layers:
            if isinstance(layer, keras.layers.PReLU):
                layer.alpha.assign(tf.zeros_like(layer.alpha))
        return model

    if active:
        models.get_backbone = built_with_relu_start
    try:
        yield
    finally:
        models.get_backbone = build


def nearest_class_mean_accuracy(embeddings, labels) -> float:
    """Leave-one-out nearest-class-mean accuracy of L2-normalized embeddings."""
    import numpy as np

    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sums = np.zeros((labels.max() + 1, e.shape[1]))
    np.add.at(sums, labels, e)
    counts = np.bincount(labels)
    right = total = 0
    for i in np.flatnonzero(counts[labels] > 1):
        means = sums.copy()
        means[labels[i]] -= e[i]
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        right += int(np.argmax(means @ e[i]) == labels[i])
        total += 1
    return right / total


def decoded_split(manifest, config):
    """The training images as our pipeline decodes them (centre crop, resize), uint8, with their labels."""
    import numpy as np
    import tensorflow as tf

    from arcface.data.preprocess import face_pixels

    images = np.stack([face_pixels(tf.io.read_file(path), config.image_size, config.center_crop).numpy()
                       for path in manifest.absolute_paths("train")])
    return images, np.array(manifest.labels("train"))


def decoded_pair_images(pairs_file: Path, config) -> tuple:
    """Every image of a bench_quality pairs file, decoded as ``decoded_split`` does, and its path as the
    evaluation reads it (so that embeddings made elsewhere can be scored on those pairs)."""
    import numpy as np
    import tensorflow as tf

    from arcface.data.preprocess import face_pixels
    from arcface.evaluation.pairs import read_pairs
    from bench_quality import SHARED

    pairs = read_pairs(pairs_file, SHARED / "lfw_deepfunneled")
    paths = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    return np.stack([face_pixels(tf.io.read_file(p), config.image_size, config.center_crop).numpy()
                     for p in paths]), np.array(paths)


def init_stats(config, images, labels) -> dict:
    import keras
    import numpy as np

    from arcface.data.preprocess import normalize
    from arcface.models import build_models

    keras.utils.set_random_seed(config.seed)
    order = np.random.default_rng(config.seed).permutation(len(labels))
    _, embedding_model = build_models(config)
    embeddings = np.concatenate([embedding_model(normalize(images[order[i:i + 64]]), training=True).numpy()
                                 for i in range(0, len(order), 64)])
    return {"nearest_class_mean_accuracy": round(nearest_class_mean_accuracy(embeddings, labels[order]), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="exact,relu_start")
    parser.add_argument("--steps", type=int, default=125)
    parser.add_argument("--window", type=int, default=25, help="steps per reported loss")
    parser.add_argument("--warmup_steps", type=int, default=36)
    parser.add_argument("--scale", type=float, default=64.0)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--init_stats", action="store_true", help="also measure the untrained embeddings")
    parser.add_argument("--dump_npz", help="write the decoded training images here (for reference_probe_torch.py), "
                                           "and the test pairs' images when --workdir has bench_quality's pairs.txt")
    parser.add_argument("--workdir", help="reuse bench_quality's --workdir (its data/ split) or make one here")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import keras
    import numpy as np

    from arcface.config import load_yaml
    from arcface.data import run_validation
    from arcface.train import train
    from bench_quality import SHARED, link_tree, split_identities

    work = Path(args.workdir or tempfile.mkdtemp(prefix="arcface-probe-"))
    if not (work / "data" / "train").is_dir():
        train_split, validation_split, _ = split_identities(SHARED / "lfw_deepfunneled", "lfw", args.seed)
        link_tree(work / "data" / "train", train_split)
        link_tree(work / "data" / "validation", validation_split)
    identities = sum(1 for p in (work / "data" / "train").iterdir() if p.is_dir())
    manifest = run_validation(str(work / "data" / "train"), str(work / "data" / "validation"),
                              str(work / "probe_manifest"), n_classes=identities).manifest
    windows = max(1, args.steps // args.window)
    # The probes and the reference's dumps were recorded on the 0.55 centre crop (the preset's crop then); the
    # probe trains on the validated images as they are, so it keeps that crop whatever the preset aligns with.
    base = load_yaml(str(REPO / "configs" / "lfw_cpu.yaml")).replace(
        align="none", center_crop=0.55, n_classes=identities, enhance=args.scale, epochs=windows,
        steps_per_epoch=args.window, schedule="constant", warmup_epochs=args.warmup_steps / args.window,
        max_minutes=0.0, seed=args.seed, image_size=args.image_size)
    if args.dump_npz or args.init_stats:
        images, labels = decoded_split(manifest, base)
        if args.dump_npz:
            Path(args.dump_npz).parent.mkdir(parents=True, exist_ok=True)
            test = {}
            if (work / "pairs.txt").is_file():  # the reference trained on this split is scored on its pairs
                test["test_x"], test["test_paths"] = decoded_pair_images(work / "pairs.txt", base)
            np.savez(args.dump_npz, x=images, y=labels, **test)
            print(f"wrote {len(labels)} images of {identities} identities and {len(test.get('test_x', []))} test "
                  f"images to {args.dump_npz}", file=sys.stderr)
            if not args.variants:
                return 0
    result = {"benchmark": "convergence_probe", "scale": args.scale, "penalty": base.penalty,
              "image_size": args.image_size, "train_identities": identities,
              "train_images": len(manifest.split("train")), "steps": windows * args.window, "window": args.window,
              "warmup_steps": args.warmup_steps, "batch_size": base.batch_size, "lr": base.lr, "seed": args.seed,
              "variants": {}}
    for name in args.variants.split(","):
        overrides = dict(VARIANTS[name])
        start_as_relu = overrides.pop("relu_start", False)
        config = base.replace(save_path=tempfile.mkdtemp(prefix=f"{name}-", dir=work), resume=False, **overrides)
        record = {"overrides": VARIANTS[name]}
        with relu_start(start_as_relu):
            if args.init_stats:
                keras.backend.clear_session()
                record["untrained"] = init_stats(config, images, labels)
            keras.backend.clear_session()
            started, load = time.time(), os.getloadavg()
            outcome = train(config, manifest, verbose=0)
        record.update({
            "load_average_at_start": [round(x, 2) for x in load],
            "wall_minutes": round((time.time() - started) / 60, 2),
            "loss_by_step": {str(h["epoch"] * args.window): round(h["cross_entropy"], 3) for h in outcome.history},
            "train_accuracy_by_step": {str(h["epoch"] * args.window): round(h["accuracy"], 4)
                                       for h in outcome.history}})
        result["variants"][name] = record
        print(f"{name}: {json.dumps(record)}", file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
