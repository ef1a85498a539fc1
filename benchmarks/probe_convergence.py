"""Does ArcFace at the paper's scale (s=64, m=0.5) leave its plateau, and how soon? Short probes, one variant each.

    python benchmarks/probe_convergence.py --variants exact,backbone_clip5 --out benchmarks/results/convergence_probes.json

Data: the training identities of bench_quality.py's LFW split (seed 42: 171 identities, 2,157 images), the LFW
preset (configs/lfw_cpu.yaml: MobileFaceNet 96x96, SGD lr 0.1 momentum 0.9, weight decay 5e-4, batch 64) at s=64.
Each "epoch" is capped at --window steps, so the history gives the mean cross-entropy and training accuracy (from
the cosines) of every window of steps: the loss at steps 25, 50, ... The learning rate is constant after a warm-up
of --warmup_steps (36 steps: the preset's one epoch), as in the first part of the real run, whose cosine decay has
barely begun by then. With s=64 and m=0.5 the loss starts near 30.7 + ln(classes) = 35.8 (the true class's logit is
s*cos(pi/2 + 0.5) = -30.7 while the others are near 0) and stays there until the true class's cosine grows.

Variants (config overrides; see VARIANTS): exact (today's margin), straight_through (the margin's value with the
cosine's gradient, as insightface's CombinedMarginLoss), backbone_clip5 (the reference's clip_grad_norm_(backbone,
5)), both together.
"""

from __future__ import annotations

import argparse
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
    "straight_through": {"margin_gradient": "straight_through"},
    "backbone_clip5": {"backbone_clipnorm": 5.0},
    "clip5_straight_through": {"backbone_clipnorm": 5.0, "margin_gradient": "straight_through"},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="exact,backbone_clip5")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--window", type=int, default=25, help="steps per reported loss")
    parser.add_argument("--warmup_steps", type=int, default=36)
    parser.add_argument("--scale", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", help="reuse bench_quality's --workdir (its data/ split) or make one here")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import keras

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
    base = load_yaml(str(REPO / "configs" / "lfw_cpu.yaml")).replace(
        n_classes=identities, enhance=args.scale, epochs=windows, steps_per_epoch=args.window, schedule="constant",
        warmup_epochs=args.warmup_steps / args.window, max_minutes=0.0, seed=args.seed)
    result = {"benchmark": "convergence_probe", "scale": args.scale, "penalty": base.penalty,
              "train_identities": identities, "train_images": len(manifest.split("train")),
              "steps": windows * args.window, "window": args.window, "warmup_steps": args.warmup_steps,
              "batch_size": base.batch_size, "lr": base.lr, "variants": {}}
    for name in args.variants.split(","):
        keras.backend.clear_session()
        started, load = time.time(), os.getloadavg()
        outcome = train(base.replace(save_path=tempfile.mkdtemp(prefix=f"{name}-", dir=work), resume=False, **VARIANTS[name]),
                        manifest, verbose=0)
        result["variants"][name] = {
            "overrides": VARIANTS[name], "load_average_at_start": [round(x, 2) for x in load],
            "wall_minutes": round((time.time() - started) / 60, 2),
            "loss_by_step": {str((h["epoch"]) * args.window): round(h["cross_entropy"], 3) for h in outcome.history},
            "train_accuracy_by_step": {str(h["epoch"] * args.window): round(h["accuracy"], 4)
                                       for h in outcome.history}}
        print(f"{name}: {json.dumps(result['variants'][name])}", file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
