"""Starting from what was learned (--init_from, the pipeline's warm start), against starting from scratch.

    python benchmarks/bench_warm_start.py --experiment weekly --seed 42 --out benchmarks/results/warm_start_weekly_seed42.json
    python benchmarks/bench_warm_start.py --experiment weekly --team lfw --week_epochs 6 --max_genuine 1000 --seed 42 \
        --out benchmarks/results/warm_start_weekly_lfw_6epochs_seed42.json
    python benchmarks/bench_warm_start.py --experiment transfer --seed 42 --out benchmarks/results/warm_start_transfer_seed42.json

The team (--team) is ORL (../shared/data/faces/orl_faces, 40 people, none of them in LFW) or, for the weekly
loop, the 115 LFW people with 10 photos or more (a larger team: more pairs in every fold). Per person, a seeded
5 photos train, 1 validates, and up to 6 of the others are the team's held-out photos (ORL has 4 left); their
pairs (every genuine pair or --max_genuine of them, as many impostors) are what a team would judge a model by.

weekly: the retraining loop. Week 1 trains from scratch on the team (the team's preset, --week_epochs epochs); week 2
trains on the same photos with the same budget, once from scratch (another seed, as a new run draws) and once
from week 1's model (what the pipeline does by default when its store holds a champion).

transfer: a model pretrained on LFW identities (the LFW preset, aligned faces, --pretrain_epochs epochs) is
fine-tuned on the team with configs/finetune_cpu.yaml, against training from scratch on the team for the same
total budget in images (pretraining's and fine-tuning's together); the fine-tuning choices (the new identities'
rows, the backbone's rate) are varied one at a time. Every model is scored on the team's held-out pairs and on
the LFW test pairs of bench_quality's split (identities disjoint from pretraining).

Budgets are epochs, not minutes: every variant trains on the same number of images on any CPU (the wall time is
recorded). Differences are fold by fold on the same pairs (bench_quality.paired_folds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces"))
TEAM_TRAIN, TEAM_VALIDATION, TEAM_HELD_MAX = 5, 1, 6
#: The teams, each with the preset it trains with: ORL's photos are pre-cropped, LFW's are aligned first.
TEAMS = {"orl": {"folder": "orl_faces", "min_photos": 10, "preset": "configs/orl_cpu.yaml"},
         "lfw": {"folder": "lfw_deepfunneled", "min_photos": 10, "preset": "configs/lfw_cpu.yaml"}}
RECORD_FILE = "bench_record.json"  # what training a model of the workdir recorded (--reuse reads it)

#: Fine-tuning variants of the transfer experiment: overrides of configs/finetune_cpu.yaml.
FINETUNE_VARIANTS = {
    "finetune": {},
    "finetune_random_rows": {"head_init": "random"},
    "finetune_backbone_tenth_rate": {"backbone_lr_scale": 0.1},
    "finetune_backbone_frozen": {"backbone_lr_scale": 0.0},
}


def _quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu() -> dict:
    """What the figures were measured on (they compare only within one machine)."""
    flags, model = set(), platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(),
            "bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}), "avx512f": "avx512f" in flags}


def team_split(team: str, seed: int) -> tuple[dict, dict, dict]:
    """Per person with enough photos: TEAM_TRAIN photos train, TEAM_VALIDATION validate, up to TEAM_HELD_MAX of the
    rest are held out."""
    rng = random.Random(seed)
    train, validation, held = {}, {}, {}
    for person in sorted(p for p in (SHARED / TEAMS[team]["folder"]).iterdir() if p.is_dir()):
        files = sorted(person.iterdir())
        if len(files) < TEAMS[team]["min_photos"]:
            continue
        rng.shuffle(files)
        train[person.name] = files[:TEAM_TRAIN]
        validation[person.name] = files[TEAM_TRAIN:TEAM_TRAIN + TEAM_VALIDATION]
        held[person.name] = files[TEAM_TRAIN + TEAM_VALIDATION:][:TEAM_HELD_MAX]
    return train, validation, held


class Workbench:
    """The folders, pairs and manifests one experiment shares between its variants."""

    def __init__(self, work: Path, seed: int, max_genuine: int, team: str = "orl", reuse: bool = False):
        from arcface.data import run_validation

        self.quality = _quality()
        self.work, self.seed, self.reuse = work, seed, reuse
        train, validation, held = team_split(team, seed)
        self.quality.link_tree(work / "team" / "train", train)
        self.quality.link_tree(work / "team" / "validation", validation)
        if team == "orl":
            self.team_root = self.quality.orl_as_lfw(SHARED / "orl_faces", work / "orl_as_lfw") \
                if not (work / "orl_as_lfw").exists() else work / "orl_as_lfw"
            held = {n: [self.team_root / n / f"{n}_{int(f.stem):04d}.jpg" for f in files] for n, files in held.items()}
        else:  # LFW's files are already named as its pairs name them
            self.team_root = SHARED / TEAMS[team]["folder"]
        self.team_pairs = self.quality.write_pairs(work / "team_pairs.txt", held, seed, max_genuine)
        self.team = run_validation(str(work / "team" / "train"), str(work / "team" / "validation"),
                                   str(work / "team_manifest")).manifest
        self.aligned: dict[str, object] = {}
        self.results: dict[str, dict] = {}

    def team_manifest(self, config):
        """The team's photos as the config trains on them (aligned once, cached by content)."""
        if config.align == "none":
            return self.team
        if "team" not in self.aligned:
            from arcface.data.align import run_alignment

            self.aligned["team"] = run_alignment(str(self.work / "team_manifest"), str(self.work / "team_aligned"),
                                                 method=config.align, image_size=config.image_size,
                                                 cache_dir=str(self.work / "align_cache"))
        return self.aligned["team"]

    def train(self, name: str, config, manifest, **kwargs) -> dict:
        import keras

        from arcface.train import train

        done = self.work / "models" / name / RECORD_FILE
        if self.reuse and done.is_file():  # trained by an earlier run of this workdir, with the same arguments
            record = json.loads(done.read_text())
            self.results[name] = {"training": record}
            print(f"{name}: reused {json.dumps(record)}", file=sys.stderr, flush=True)
            return record
        keras.backend.clear_session()
        started, load = time.time(), os.getloadavg()
        config = config.replace(save_path=str(self.work / "models" / name),
                                n_classes=len(manifest.class_names))
        outcome = train(config, manifest, verbose=0, **kwargs)
        record = {"init_from": config.init_from, "epochs": config.epochs, "epochs_completed": outcome.epochs_completed,
                  "steps": outcome.steps, "images_trained": outcome.steps * config.batch_size,
                  "images_per_second": outcome.images_per_second, "stopped": outcome.stopped,
                  "wall_minutes": (time.time() - started) / 60, "load_average_at_start": load,
                  "final_loss": outcome.history[-1]["loss"] if outcome.history else None}
        self.results[name] = {"training": record}
        done.write_text(json.dumps(record))
        print(f"{name}: trained {json.dumps(record)}", file=sys.stderr, flush=True)
        return record

    def score(self, name: str, pairs: str, pairs_file: Path, pairs_root: Path) -> dict:
        from arcface.evaluation.evaluate import evaluate

        metrics = evaluate(str(self.work / "models" / name), None, output_dir=str(self.work / f"eval_{pairs}" / name),
                           pairs_file=str(pairs_file), pairs_root=str(pairs_root))
        figures = self.quality.verification_figures(metrics["summary"])
        figures.pop("closed_set_top1", None)  # no closed set without a manifest
        self.results[name][pairs] = figures
        print(f"{name}: {pairs} {json.dumps(figures)}", file=sys.stderr, flush=True)
        return figures

    def paired(self, pairs: str, first: str, second: str) -> dict:
        result = _paired(self.quality, self.work / f"eval_{pairs}", first, second)
        return {k: result[k] for k in ("mean_difference", "difference_std", "folds_first_better",
                                       "folds_second_better", "auc_difference", "fold_differences")}


def _paired(quality, eval_dir: Path, first: str, second: str) -> dict:
    """bench_quality.paired_folds reads <workdir>/eval/<name>/; here each pairs file has its own eval folder."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "eval").symlink_to(eval_dir)
        return quality.paired_folds(Path(tmp), first, second)


def weekly(bench: Workbench, args) -> dict:
    from arcface.config import load_yaml

    preset = load_yaml(REPO / TEAMS[args.team]["preset"]).replace(max_minutes=0.0, epochs=args.week_epochs,
                                                                  seed=args.seed)
    manifest = bench.team_manifest(preset)
    bench.train("week1", preset, manifest)
    second = preset.replace(seed=args.seed + 1)  # the next run draws another seed
    bench.train("week2_scratch", second, manifest)
    warm = second.replace(init_from=str(bench.work / "models" / "week1"))
    bench.train("week2_warm", warm, manifest)
    # What fine-tuning does (configs/finetune_cpu.yaml): a tenth of the rate, no warm-up, the rate decayed to zero.
    bench.train("week2_warm_tenth_lr", warm.replace(lr=preset.lr / 10, warmup_epochs=0.0), manifest)
    names = ("week1", "week2_scratch", "week2_warm", "week2_warm_tenth_lr")
    for name in names:
        bench.score(name, "team", bench.work / "team_pairs.txt", bench.team_root)
    return {"preset": TEAMS[args.team]["preset"], "week_epochs": args.week_epochs,
            "paired": {"team": {f"{a} - {b}": bench.paired("team", a, b)
                                for a in names[2:] for b in ("week2_scratch", "week1")}}}


def transfer(bench: Workbench, args) -> dict:
    from arcface.config import load_yaml
    from arcface.data import run_validation
    from arcface.data.align import run_alignment

    quality = bench.quality
    lfw = SHARED / "lfw_deepfunneled"
    train_split, validation_split, test_split = quality.split_identities(lfw, "lfw", args.seed)
    quality.link_tree(bench.work / "lfw" / "train", train_split)
    quality.link_tree(bench.work / "lfw" / "validation", validation_split)
    lfw_pairs = quality.write_pairs(bench.work / "lfw_pairs.txt", {
        n: [lfw / n / f.name for f in files] for n, files in test_split.items()}, args.seed, args.max_genuine)
    pretrain = load_yaml(REPO / "configs" / "lfw_cpu.yaml").replace(max_minutes=0.0, epochs=args.pretrain_epochs,
                                                                    seed=args.seed, n_classes=len(train_split))
    run_validation(str(bench.work / "lfw" / "train"), str(bench.work / "lfw" / "validation"),
                   str(bench.work / "lfw_manifest"), n_classes=pretrain.n_classes)
    lfw_manifest = run_alignment(str(bench.work / "lfw_manifest"), str(bench.work / "lfw_aligned"),
                                 method=pretrain.align, image_size=pretrain.image_size,
                                 cache_dir=str(bench.work / "align_cache"))
    pretrained = bench.train("pretrained", pretrain.replace(n_classes=len(lfw_manifest.class_names)), lfw_manifest)

    finetune = load_yaml(REPO / "configs" / "finetune_cpu.yaml").replace(max_minutes=0.0, seed=args.seed,
                                                                         epochs=args.finetune_epochs)
    team = bench.team_manifest(finetune)
    source = str(bench.work / "models" / "pretrained")
    variants = [v for v in args.variants.split(",") if v]
    for name in variants:
        bench.train(name, finetune.replace(init_from=source, **FINETUNE_VARIANTS[name]), team)
    # From scratch on the team, for the images the pretrained model and its fine-tuning saw together, with the
    # recipe of the preset it would otherwise use (the LFW preset: same network, alignment and schedule).
    team_images = len(team.split("train"))
    total = pretrained["images_trained"] + args.finetune_epochs * (team_images // finetune.batch_size) * \
        finetune.batch_size
    scratch_epochs = math.ceil(total / ((team_images // pretrain.batch_size) * pretrain.batch_size or team_images))
    bench.train("scratch", pretrain.replace(epochs=scratch_epochs, seed=args.seed), team)

    names = ["pretrained", *variants, "scratch"]
    for name in names:
        bench.score(name, "team", bench.work / "team_pairs.txt", bench.team_root)
        bench.score(name, "lfw", bench.work / "lfw_pairs.txt", lfw)
    paired = {pairs: {f"{name} - scratch": bench.paired(pairs, name, "scratch") for name in names[:-1]}
              for pairs in ("team", "lfw")}
    paired["team"].update({f"{name} - finetune": bench.paired("team", name, "finetune")
                           for name in variants if name != "finetune"})
    return {"pretrain": {"preset": "configs/lfw_cpu.yaml", "epochs": args.pretrain_epochs,
                         "identities": len(lfw_manifest.class_names), "images": len(lfw_manifest.split("train"))},
            "finetune": {"preset": "configs/finetune_cpu.yaml", "epochs": args.finetune_epochs},
            "scratch_epochs": scratch_epochs, "lfw_pairs": lfw_pairs, "paired": paired}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=("weekly", "transfer"), required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--team", choices=tuple(TEAMS), default="orl",
                        help="the team's photos: ORL's 40 people, or (weekly only) LFW's 115 with 10 photos or more")
    parser.add_argument("--week_epochs", type=int, default=12, help="weekly: each week's epochs on the team")
    parser.add_argument("--pretrain_epochs", type=int, default=8, help="transfer: epochs of LFW pretraining")
    parser.add_argument("--finetune_epochs", type=int, default=20, help="transfer: epochs of fine-tuning")
    parser.add_argument("--variants", default=",".join(FINETUNE_VARIANTS),
                        help=f"transfer: fine-tuning variants, of {', '.join(FINETUNE_VARIANTS)}")
    parser.add_argument("--max_genuine", type=int, default=500, help="genuine pairs at most (as many impostors)")
    parser.add_argument("--workdir", help="keep the folders here (default: a new temporary folder)")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--reuse", action="store_true",
                        help="with --workdir of an earlier run with the same arguments: score the models it trained "
                             "instead of training them again")
    args = parser.parse_args(argv)
    if args.experiment == "transfer" and args.team != "orl":
        parser.error("--experiment transfer pretrains on LFW: its team must be ORL (--team orl), whose people are "
                     "not in LFW")
    if not (SHARED / TEAMS[args.team]["folder"]).is_dir():
        raise SystemExit(f"{SHARED / TEAMS[args.team]['folder']} not found: this benchmark needs "
                         "../shared/data/faces (or ARCFACE_SHARED_FACES)")
    from arcface import __version__

    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"arcface-warm-{args.experiment}-"))
    bench = Workbench(work, args.seed, args.max_genuine, team=args.team, reuse=args.reuse)
    started = time.time()
    details = (weekly if args.experiment == "weekly" else transfer)(bench, args)
    result = {"benchmark": f"warm_start_{args.experiment}", "package_version": __version__, "seed": args.seed,
              "cpu": cpu(), "command": "python benchmarks/bench_warm_start.py " + " ".join(argv or sys.argv[1:]),
              "team": {"photos": args.team, "people": len(bench.team.class_names),
                       "train_images": len(bench.team.split("train")), "pairs": bench.team_pairs},
              **details, "variants": bench.results, "wall_minutes": (time.time() - started) / 60,
              "workdir": str(work)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
