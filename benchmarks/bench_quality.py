"""Recognition quality on real faces under a fixed CPU budget, and the margin ablation.

    python benchmarks/bench_quality.py --dataset lfw --out benchmarks/results/quality_lfw.json
    python benchmarks/bench_quality.py --dataset orl --budget_minutes 3 --out benchmarks/results/quality_orl.json
    python benchmarks/bench_quality.py --dataset lfw --variants preset,aligned,photos --out benchmarks/results/quality_lfw_aligned.json
    python benchmarks/bench_quality.py --workdir W --pipeline_run runs/local/arcface-training-...  # vs pipeline.py
    python benchmarks/bench_quality.py --workdir W --paired preset,softmax   # fold by fold, same pairs
    python benchmarks/bench_quality.py --train_min_images 2 --set epochs=10 --rescore old=W/models/preset ...

Open-set protocol: identities are split so that no test identity is ever seen in training. LFW: every
identity with 2-3 images, plus a seeded quarter of those with 4 or more, is held out; the rest (4+ images)
train, with one image of each identity that has 5+ kept for the closed-set validation that picks the best
epoch (--train_min_images 2 trains the 2-3-image identities too, 1 every identity; the held-out quarter
stays). ORL: a seeded quarter of the 40 identities is held out. Test pairs are all genuine pairs of the held-out
identities (a seeded sample when there are more than --max_genuine) and as many seeded impostor pairs, written
as an LFW-format pairs file and scored by the evaluation step (10-fold accuracy, AUC, TAR@FAR).

Every variant goes through the product's own steps: validate -> train (time budget) -> evaluate.
"photos" trains nothing: the "aligned" model scores the same pairs after every test image was pasted into a
larger scene (see plant_photos), once aligning the scenes as the model card says and once without alignment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces"))

VARIANTS = {
    "preset": {},  # the config file as it is
    "arcface": {"margin": "arcface", "penalty": 0.5, "enhance": 64.0},
    "cosface": {"margin": "cosface", "penalty": 0.35, "enhance": 64.0},
    "softmax": {"margin": "softmax"},
    "untrained": None,  # the same network with its initial weights: the floor
    # Faces found and warped onto the 5-point template (the align step) on a preset that crops instead (the LFW
    # preset aligns since #16); the evaluation aligns the test pairs' photos the same way (the model's metadata).
    "aligned": {"align": "mtcnn", "center_crop": 1.0},
    # The cosine schedule ending inside the budget (10 epochs instead of 14) and the decoded crops cached.
    "preset_fitted": {"epochs": 10, "cache": True},
    "softmax_fitted": {"margin": "softmax", "epochs": 10, "cache": True},
    # The LFW preset's way of training s=64 (README, "Why s=64 sat on its plateau") on another preset.
    "reference_recipe": {"margin": "arcface", "enhance": 64.0, "penalty": 0.5, "margin_gradient": "straight_through",
                         "backbone_clipnorm": 5.0, "jitter": False, "schedule": "poly", "cache": True},
    # s=32, the scale the reference trainer did best with here (85.4 % vs ~83 % at s=64, issue #16); the LFW
    # preset's own since #16.
    "preset_s32": {"enhance": 32.0},
    # The preset in bfloat16 where the CPU has it (auto keeps MobileFaceNet in float32 on CPUs: it is slower so).
    "preset_bf16": {"precision": "mixed_bfloat16"},
}


def split_identities(root: Path, dataset: str, seed: int, train_min_images: int = 4) -> tuple[dict, dict, dict]:
    """(train {id: [files]}, validation {id: [files]}, test {id: [files]}) with disjoint identities.

    LFW: train_min_images < 4 trains the identities with that many images or more too (2: those with 2-3
    images, 1: every identity); the held-out quarter of the 4+ identities is the same for one seed either way."""
    rng = random.Random(seed)
    people = {p.name: sorted(f for f in p.iterdir() if f.is_file()) for p in sorted(root.iterdir()) if p.is_dir()}
    if dataset == "lfw":
        big = sorted(n for n, f in people.items() if len(f) >= 4)
        held = set(rng.sample(big, len(big) // 4))
        if train_min_images >= 4:
            held |= {n for n, f in people.items() if 2 <= len(f) <= 3}
        train_ids = [n for n in sorted(people) if len(people[n]) >= min(train_min_images, 4) and n not in held]
    else:
        names = sorted(people)
        held = set(rng.sample(names, len(names) // 4))
        train_ids = [n for n in names if n not in held]
    train, validation = {}, {}
    for name in train_ids:
        files = list(people[name])
        if len(files) >= 5:
            validation[name] = [files.pop(rng.randrange(len(files)))]
        train[name] = files
    test = {n: people[n] for n in sorted(held)}
    return train, validation, test


def link_tree(folder: Path, split: dict[str, list[Path]]) -> None:
    """The original layout, made of links to the shared images (nothing is copied or changed)."""
    for name, files in split.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = folder / name / f.name
            if not (link.is_symlink() and link.readlink() == f):  # a --workdir from an earlier run is reused
                link.symlink_to(f)


def write_pairs(path: Path, test: dict[str, list[Path]], seed: int, max_genuine: int) -> dict:
    """Balanced genuine/impostor pairs in LFW's format (no header: genuine lines first, then impostors)."""
    from arcface.evaluation.pairs import generate_pairs

    identities = [n for n, files in test.items() for _ in files]
    paths = [str(f) for files in test.values() for f in files]
    pairs = generate_pairs(identities, paths, seed, max_genuine=max_genuine, min_impostor=0,
                           max_impostor=max_genuine)
    pattern = re.compile(r"^(.*)_(\d+)\.\w+$")

    def name_index(p: str) -> tuple[str, int]:
        m = pattern.match(os.path.basename(p))
        if not m:
            raise ValueError(f"{p} is not named <name>_<i>.<ext>")
        return m.group(1), int(m.group(2))

    lines = []
    for pair in sorted(pairs, key=lambda p: not p.same):
        (a, i), (b, j) = name_index(pair.path_a), name_index(pair.path_b)
        lines.append(f"{a}\t{i}\t{j}" if pair.same else f"{a}\t{i}\t{b}\t{j}")
    path.write_text("\n".join(lines) + "\n")
    return {"genuine": pairs.counts["genuine"], "impostor": pairs.counts["impostor"]}


def orl_as_lfw(root: Path, out: Path) -> Path:
    """ORL names files <k>.pgm in s<N>/; LFW-format pairs name <name>/<name>_<k:04d>.jpg: link them so (the
    decoder reads the PGM header, not the file name)."""
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        (out / person.name).mkdir(parents=True, exist_ok=True)
        for f in person.iterdir():
            (out / person.name / f"{person.name}_{int(f.stem):04d}.jpg").symlink_to(f)
    return out


PHOTO_SCENE = {"scene_side": 480, "face_box": 160, "scale": (0.5, 1.5), "rotation_degrees": (-25.0, 25.0)}


def pairs_file_images(pairs_file: Path) -> list[str]:
    """The <name>/<name>_<i:04d>.jpg paths an LFW-format pairs file names."""
    names = set()
    for line in pairs_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            names |= {(parts[0], parts[1]), (parts[0], parts[2])}
        elif len(parts) == 4:
            names |= {(parts[0], parts[1]), (parts[2], parts[3])}
    return sorted(f"{n}/{n}_{int(i):04d}.jpg" for n, i in names)


def plant_photos(pairs_root: Path, pairs_file: Path, out: Path, seed: int) -> dict:
    """Each test image of the pairs file as a "photo": its central face box pasted into a larger scene at a seeded
    random position, scale and rotation, over a smooth random background. Written to out/ under the same names,
    so the same pairs file reads them; the shared images are only read."""
    import numpy as np
    from PIL import Image

    side, box = PHOTO_SCENE["scene_side"], PHOTO_SCENE["face_box"]
    images = pairs_file_images(pairs_file)
    for relative in images:
        target = out / relative
        rng = random.Random(f"{seed}:{relative}")
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(pairs_root / relative) as source:
            face = source.convert("RGB")
        left = (face.width - box) // 2
        top = (face.height - box) // 2
        face = face.crop((left, top, left + box, top + box))
        size = round(box * rng.uniform(*PHOTO_SCENE["scale"]))
        face = face.resize((size, size), Image.BICUBIC)
        mask = Image.new("L", face.size, 255)
        angle = rng.uniform(*PHOTO_SCENE["rotation_degrees"])
        face = face.rotate(angle, resample=Image.BICUBIC, expand=True)
        mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
        noise = np.random.default_rng(rng.randrange(2**32))
        coarse = Image.fromarray(noise.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((side, side),
                                                                                         Image.BICUBIC)
        grain = noise.normal(0, 8, (side, side, 3))
        scene = Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8))
        scene.paste(face, (rng.randrange(side - face.width + 1), rng.randrange(side - face.height + 1)), mask)
        scene.save(target, quality=92)
    return {"images": len(images), **PHOTO_SCENE}


def untrained_model(config, manifest, folder: str) -> None:
    from arcface import artifacts
    from arcface.train import Trainer

    trainer = Trainer(config.replace(save_path=folder), manifest, verbose=0)
    trainer.save_models(folder)
    config.replace(save_path=folder).save(os.path.join(folder, artifacts.CONFIG_FILE))
    artifacts.write_json(os.path.join(folder, artifacts.METADATA_FILE), trainer.metadata(epochs_completed=0))


def run(args) -> dict:
    import keras

    from arcface import __version__
    from arcface.config import load_yaml
    from arcface.data import run_validation
    from arcface.evaluation.evaluate import evaluate
    from arcface.train import train

    source = SHARED / ("lfw_deepfunneled" if args.dataset == "lfw" else "orl_faces")
    if not source.is_dir():
        raise SystemExit(f"{source} not found: this benchmark needs ../shared/data/faces (or ARCFACE_SHARED_FACES)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"arcface-quality-{args.dataset}-"))
    train_split, validation_split, test_split = split_identities(source, args.dataset, args.seed,
                                                                 args.train_min_images)
    link_tree(work / "data" / "train", train_split)
    link_tree(work / "data" / "validation", validation_split)
    pairs_root = source if args.dataset == "lfw" else orl_as_lfw(source, work / "orl_as_lfw")
    pair_counts = write_pairs(work / "pairs.txt", {
        n: [pairs_root / n / (f.name if args.dataset == "lfw" else f"{n}_{int(f.stem):04d}.jpg") for f in files]
        for n, files in test_split.items()}, args.seed, args.max_genuine)

    if args.prepare_only:
        command = (f"python pipeline.py run --local --config {args.config} --data {work / 'data'} "
                   f"--param n_classes={len(train_split)} --param pairs_file={work / 'pairs.txt'} "
                   f"--param pairs_root={pairs_root} --param accuracy_threshold=0.0"
                   + "".join(f" --param {k}={v}" for k, v in args.set.items()))
        return {"workdir": str(work), "train_identities": len(train_split), "pairs": pair_counts,
                "pipeline_command": command}
    base = load_yaml(args.config)
    base = base.replace(n_classes=len(train_split), max_minutes=args.budget_minutes, seed=args.seed,
                        **args.set)
    validated = run_validation(str(work / "data" / "train"), str(work / "data" / "validation"),
                               str(work / "manifest"), n_classes=base.n_classes, min_images=base.min_images)
    manifest = validated.manifest
    n_train = len(manifest.split("train"))
    result = {"benchmark": "quality", "dataset": args.dataset, "package_version": __version__,
              "config": args.config, "budget_minutes": args.budget_minutes, "seed": args.seed,
              "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
              "train_min_images": args.train_min_images, "set": args.set,
              "split": {"train_identities": len(train_split), "train_images": n_train,
                        "validation_images": len(manifest.split("validation")),
                        "test_identities": len(test_split),
                        "test_images": sum(len(f) for f in test_split.values()), "pairs": pair_counts,
                        "identity_overlap": len(set(train_split) & set(test_split))},
              "variants": {}}
    variants = [v for v in args.variants.split(",") if v]  # "" with --rescore: train nothing
    if args.append and args.out and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            earlier = json.load(f)
        same = ("dataset", "seed", "budget_minutes", "split", "set")
        defaults = {"set": {}}  # results written before --set existed
        if any(earlier.get(k, defaults.get(k)) != result[k] for k in same):
            raise SystemExit(f"--append: {args.out} was measured with another {'/'.join(same)}; "
                             "write to a new --out instead")
        result["variants"] = {k: v for k, v in earlier["variants"].items() if k not in variants}
        result.update({k: earlier[k] for k in ("config", "load_average_at_start") if k in earlier})
    for name, model in args.rescore.items():  # a model trained elsewhere, scored on these pairs
        if model.endswith(".npz"):  # embeddings made by another trainer (reference_probe_torch.py)
            result["variants"][name] = {"rescored_embeddings": model,
                                        **score_embeddings(model, work, name, pairs_root)}
            print(f"{name}: {json.dumps(result['variants'][name])}", file=sys.stderr, flush=True)
            continue
        metrics = evaluate(model, None, output_dir=str(work / "eval" / name), pairs_file=str(work / "pairs.txt"),
                           pairs_root=str(pairs_root))
        result["variants"][name] = {"rescored_model": model, **verification_figures(metrics["summary"])}
        print(f"{name}: {json.dumps(result['variants'][name])}", file=sys.stderr, flush=True)
    for name in variants:
        if name == "photos":
            result["variants"][name] = photos_variant(work, pairs_root, args.seed, result["variants"].get("aligned"))
            print(f"{name}: {json.dumps(result['variants'][name])}", file=sys.stderr, flush=True)
            if args.out:
                _write(args.out, result)
            continue
        overrides = VARIANTS[name]
        folder = str(work / "models" / name)
        started, load_at_start = time.time(), os.getloadavg()
        keras.backend.clear_session()
        variant_manifest = manifest  # the aligned one where the variant aligns: its closed set is scored on it
        if overrides is None:
            untrained_model(base, manifest, folder)
            trained = {"epochs_completed": 0, "images_per_second": None, "stopped": "untrained"}
        else:
            config = base.replace(save_path=folder, **overrides)
            if config.align != "none":  # cached by content: a second aligned variant aligns nothing again
                from arcface.data.align import run_alignment

                variant_manifest = run_alignment(str(work / "manifest"), str(work / "aligned" / name),
                                                 method=config.align, image_size=config.image_size,
                                                 cache_dir=str(work / "align_cache"))
                config = config.replace(n_classes=len(variant_manifest.class_names))  # faces not found: reported
            outcome = train(config, variant_manifest, verbose=0)
            trained = {"epochs_completed": outcome.epochs_completed, "steps": outcome.steps,
                       "images_per_second": outcome.images_per_second, "stopped": outcome.stopped,
                       "best_val_accuracy": outcome.best_val_accuracy,
                       "final_loss": outcome.history[-1]["loss"] if outcome.history else None}
        metrics = evaluate(folder, variant_manifest, output_dir=str(work / "eval" / name),
                           pairs_file=str(work / "pairs.txt"), pairs_root=str(pairs_root))
        result["variants"][name] = {**trained, "wall_minutes": (time.time() - started) / 60,
                                    "load_average_at_start": load_at_start,  # 1/5/15 min: the 15 spans the run
                                    "load_average_at_end": os.getloadavg(),
                                    **verification_figures(metrics["summary"])}
        print(f"{name}: {json.dumps(result['variants'][name])}", file=sys.stderr, flush=True)
        if args.out:  # keep what is done so far, so an interrupted run still tells something
            _write(args.out, result)
    result["workdir"] = str(work)
    return result


def photos_variant(work: Path, pairs_root: Path, seed: int, clean: dict | None) -> dict:
    """The "aligned" model on the planted photos of the same pairs, with the alignment its card records and
    without any; the clean figure is that model on the original test images."""
    from arcface.evaluation.evaluate import evaluate

    model = work / "models" / "aligned"
    if not (model / "metadata.json").is_file():
        raise SystemExit(f"{model} not found: the photos variant scores the aligned model; run the variants "
                         "aligned,photos together or pass the --workdir where aligned was trained")
    started = time.time()
    photos = work / "photos"
    planted = plant_photos(pairs_root, work / "pairs.txt", photos, seed)
    out = {"scenes": planted}
    for label, align in (("aligned", "mtcnn"), ("unaligned", "none")):
        metrics = evaluate(str(model), None, output_dir=str(work / "eval" / f"photos_{label}"),
                           pairs_file=str(work / "pairs.txt"), pairs_root=str(photos), align=align)
        out[label] = {**verification_figures(metrics["summary"]),
                      "faces_not_found": len(metrics["verification"]["not_aligned"])}
    if clean:
        out["clean_lfw_10fold_accuracy"] = clean["lfw_10fold_accuracy"]
        out["aligned_minus_clean_points"] = 100 * (out["aligned"]["lfw_10fold_accuracy"]
                                                   - clean["lfw_10fold_accuracy"])
    out["wall_minutes"] = (time.time() - started) / 60
    return out


def score_embeddings(npz: str, work: Path, name: str, pairs_root: Path) -> dict:
    """Unit embeddings {paths, embeddings} of the pairs' images, scored as the evaluation step scores a model;
    ``eval/<name>/metrics.json`` gets the same verification record, so ``--paired`` can compare them."""
    import numpy as np

    from arcface.evaluation.evaluate import _pair_scores, _verification
    from arcface.evaluation.pairs import read_pairs

    data = np.load(npz)
    pairs = read_pairs(work / "pairs.txt", pairs_root)
    paths = [str(p) for p in data["paths"]]
    missing = ({p.path_a for p in pairs} | {p.path_b for p in pairs}) - set(paths)
    if missing:
        raise SystemExit(f"{npz} lacks the embeddings of {len(missing)} images of {work / 'pairs.txt'} (e.g. "
                         f"{sorted(missing)[0]}): embed the test images of this --workdir's split")
    v = _verification(_pair_scores(data["embeddings"], paths, pairs), pairs)
    verification = {"pairs_file": str(work / "pairs.txt"), "pairs_counts": pairs.counts, **v}
    out = work / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"verification": verification}, indent=2) + "\n")
    return {"lfw_10fold_accuracy": v["accuracy_mean"], "accuracy_std": v["accuracy_std"], "auc": v["auc"],
            "eer": v["eer"], "tar_at_far_1e-2": v["tar_at_far"]["1e-02"]["tar"],
            "tar_at_far_1e-3": v["tar_at_far"]["1e-03"]["tar"]}


def verification_figures(summary: dict) -> dict:
    """The figures this benchmark reports, from the evaluation step's metrics summary."""
    return {"lfw_10fold_accuracy": summary["verification_accuracy"],
            "accuracy_std": summary["verification_accuracy_std"], "auc": summary["auc"], "eer": summary["eer"],
            "tar_at_far_1e-2": summary.get("tar_at_far_1e-02"), "tar_at_far_1e-3": summary.get("tar_at_far_1e-03"),
            "closed_set_top1": summary["top1_accuracy"]}


def compare_pipeline(workdir: Path, run_dir: Path) -> dict:
    """The preset as trained by the benchmark (in workdir) next to the same preset run through pipeline.py."""
    from arcface.contracts import EvaluationDir

    def side(metadata: Path, metrics: Path) -> dict:
        trained = json.loads(metadata.read_text())
        return {"epochs_completed": trained["epochs_completed"], "steps": trained["steps"],
                "stopped": trained["stopped"], "epoch_losses": [h["loss"] for h in trained["history"]],
                **verification_figures(EvaluationDir.read(metrics).to_dict())}

    for needed in (workdir / "models" / "preset", run_dir / "train-model"):
        if not needed.is_dir():
            raise SystemExit(f"{needed} not found: run the preset variant with --workdir, and pass the pipeline's "
                             "run folder (runs/local/arcface-training-...) as --pipeline_run")
    bench = side(workdir / "models" / "preset" / "metadata.json", workdir / "eval" / "preset" / "metrics.json")
    pipe = side(run_dir / "train-model" / "model" / "metadata.json",
                run_dir / "evaluate-model" / "metrics" / "metrics.json")
    shared = min(len(bench["epoch_losses"]), len(pipe["epoch_losses"]))
    return {"benchmark": "quality_pipeline_vs_benchmark", "workdir": str(workdir), "pipeline_run": str(run_dir),
            "benchmark_preset": bench, "pipeline_preset": pipe,
            "epochs_compared": shared,
            "max_epoch_loss_difference": max((abs(a - b) for a, b in zip(
                bench["epoch_losses"][:shared], pipe["epoch_losses"][:shared], strict=True)), default=None),
            "accuracy_difference": pipe["lfw_10fold_accuracy"] - bench["lfw_10fold_accuracy"],
            "auc_difference": pipe["auc"] - bench["auc"]}


def paired_folds(workdir: Path, first: str, second: str) -> dict:
    """Two variants scored on the same pairs, fold by fold: the folds differ in difficulty far more than the
    variants do, so the spread that tells them apart is that of the per-fold differences, not of each one's
    accuracies."""
    import statistics

    def verification(name: str) -> dict:
        path = workdir / "eval" / name / "metrics.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: run the variant {name} with this --workdir first")
        return json.loads(path.read_text())["verification"]

    a, b = verification(first), verification(second)
    if (a["pairs_file"], a["pairs_counts"]) != (b["pairs_file"], b["pairs_counts"]):
        raise SystemExit(f"{first} and {second} were scored on different pairs; run both on one --workdir")
    differences = [x - y for x, y in zip(a["fold_accuracies"], b["fold_accuracies"], strict=True)]
    return {"benchmark": "quality_paired_folds", "workdir": str(workdir), "variants": [first, second],
            "pairs_file": a["pairs_file"], "fold_accuracies": {first: a["fold_accuracies"],
                                                               second: b["fold_accuracies"]},
            "fold_differences": differences, "mean_difference": statistics.mean(differences),
            "difference_std": statistics.stdev(differences),
            "folds_first_better": sum(d > 0 for d in differences),
            "folds_second_better": sum(d < 0 for d in differences),
            "auc_difference": a["auc"] - b["auc"],
            "tar_at_far_difference": {far: a["tar_at_far"][far]["tar"] - b["tar_at_far"][far]["tar"]
                                      for far in a["tar_at_far"]
                                      if a["tar_at_far"][far]["tar"] is not None
                                      and b["tar_at_far"].get(far, {}).get("tar") is not None}}


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def _pairs(parser: argparse.ArgumentParser, flag: str, items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not (sep and key and value):
            parser.error(f"{flag} {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("lfw", "orl"), default="lfw")
    parser.add_argument("--config", default=None, help="preset (default: configs/<dataset>_cpu.yaml)")
    parser.add_argument("--variants", default="preset,arcface,softmax,cosface,untrained")
    parser.add_argument("--budget_minutes", type=float, default=20.0)
    parser.add_argument("--max_genuine", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train_min_images", type=int, default=4, choices=(1, 2, 4),
                        help="LFW: train the identities with at least this many images (held out: a quarter of "
                             "the 4+ ones, and the 2-3 ones while this is 4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset field for every variant (a variant's own fields win), e.g. epochs=12")
    parser.add_argument("--rescore", action="append", default=[], metavar="NAME=MODEL_DIR",
                        help="score a model trained elsewhere on this split's pairs, as the variant NAME (or the "
                             "embeddings of reference_probe_torch.py --embeddings_out, a .npz)")
    parser.add_argument("--workdir", help="keep the split, models and reports here (default: a temp folder)")
    parser.add_argument("--out", help="also write the JSON here (updated after each variant)")
    parser.add_argument("--append", action="store_true",
                        help="keep the other variants already in --out (same data set, seed, budget and split)")
    parser.add_argument("--pipeline_run", help="compare the pipeline run folder of the preset (on the split in "
                                               "--workdir) with the benchmark's preset run there; trains nothing")
    parser.add_argument("--paired", metavar="A,B",
                        help="compare two variants already scored in --workdir fold by fold; trains nothing")
    parser.add_argument("--prepare_only", action="store_true",
                        help="only make the split and pairs file, and print the pipeline command that trains on them")
    args = parser.parse_args(argv)
    args.set = _pairs(parser, "--set", args.set)
    args.rescore = _pairs(parser, "--rescore", args.rescore)
    if args.set:
        from arcface.config import ConfigError, from_dict

        try:
            args.set = {k: from_dict({k: v}).to_dict()[k] for k, v in args.set.items()}  # the flags' own types
        except ConfigError as e:
            parser.error(f"--set: {e}")
    args.config = args.config or str(REPO / "configs" / f"{args.dataset}_cpu.yaml")
    logging.basicConfig(level=logging.WARNING)
    if args.paired:
        if not args.workdir or args.paired.count(",") != 1:
            raise SystemExit("--paired A,B needs two variant names and the --workdir where both were scored")
        result = paired_folds(Path(args.workdir), *args.paired.split(","))
    elif args.pipeline_run:
        if not args.workdir:
            raise SystemExit("--pipeline_run needs the --workdir of the benchmark run it is compared with")
        result = compare_pipeline(Path(args.workdir), Path(args.pipeline_run))
    else:
        result = run(args)
    print(json.dumps(result, indent=2))
    if args.out:
        _write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
