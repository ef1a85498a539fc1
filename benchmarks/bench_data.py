"""Benchmark of the data step: validation speed (files/s) and input-pipeline throughput (images/s).

    python benchmarks/bench_data.py [--quick] [--images 10000] [--out FILE]

(1) Builds a tree of >= 10,000 JPEGs in a temporary folder by copying the real LFW faces from
../shared/data/faces/lfw_deepfunneled round-robin; every copy gets a few distinct bytes appended after the JPEG
end-of-image marker, so no two files are duplicates (decoders ignore trailing bytes). Then runs
``validate_dataset`` on it (sha256 + full check of every file) several times and reports the median files/s.
The tree was just written, so it is read from the page cache: this measures the step, not the disk.

(2) Runs ``make_dataset`` on the training split at 112x112, batch 32, with augmentation, and reports the median
images/s of several timed passes after a warm-up. :func:`pipeline_images_per_second` is importable, so a
training benchmark can compare it with the images/s a training step consumes.

Prints one JSON object (and writes it to --out). Numbers depend on the machine: the core count and load average
are part of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LFW = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces")) / "lfw_deepfunneled"


def build_tree(dest: Path, n_images: int, lfw: Path = DEFAULT_LFW, validation_every: int = 5) -> Path:
    """``dest/{train,validation}/<person>/<copy>.jpg``: n_images distinct copies of the LFW JPEGs."""
    sources = sorted(lfw.glob("*/*.jpg"))
    if not sources:
        raise SystemExit(f"no LFW JPEGs under {lfw}: set ARCFACE_SHARED_FACES to the folder holding "
                         "lfw_deepfunneled/")
    cache: dict[Path, bytes] = {}
    for i in range(n_images):
        src = sources[i % len(sources)]
        data = cache.get(src) or cache.setdefault(src, src.read_bytes())
        split = "validation" if i % validation_every == 0 else "train"
        folder = dest / split / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        # Distinct bytes after the end-of-image marker: same picture, different file hash.
        (folder / f"{src.stem}_{i // len(sources)}.jpg").write_bytes(data + b"\x00copy" + i.to_bytes(4, "big"))
    return dest


def validation_files_per_second(root: Path, runs: int = 3) -> dict:
    from arcface.data import validate_dataset

    times, cpu, result = [], [], None
    for _ in range(runs):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = validate_dataset(str(root), str(root))
        times.append(time.perf_counter() - start)
        cpu.append(_cpu_seconds() - cpu_start)
    files = sum(c["files_seen"] for c in result.report["counts"].values())
    per_cpu_s = files / statistics.median(cpu)
    return {"files": files, "runs_s": [round(t, 3) for t in times],
            "files_per_second": round(files / statistics.median(times), 1),
            # On a shared, overloaded machine wall time measures the neighbours; CPU time does not. This is
            # the rate the step reaches when all cores are free (the thread pool keeps them busy).
            "files_per_cpu_second": round(per_cpu_s, 1),
            "files_per_second_all_cores_free_estimate": round(per_cpu_s * (os.cpu_count() or 1), 1),
            "findings_by_code": result.report["findings_by_code"], "manifest": result.manifest}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return usage.ru_utime + usage.ru_stime


def pipeline_images_per_second(manifest, split: str = "train", *, image_size: int = 112, batch_size: int = 32,
                               augment: bool = True, cache: bool = False, batches: int = 60, passes: int = 3,
                               warmup_batches: int = 10, seed: int = 42) -> dict:
    """Median images/s that ``make_dataset`` delivers (repeat=True, so passes may span epochs).

    Returns ``{"images_per_second": median, "passes": [...], ...}``; compare with the images/s a training step
    consumes: the pipeline keeps up when its rate is comfortably above (prefetch hides short stalls).
    """
    from arcface.data.input import make_dataset

    ds = make_dataset(manifest, split, image_size=image_size, batch_size=batch_size, training=True, seed=seed,
                      augment=augment, cache=cache, repeat=True)
    it = iter(ds)
    for _ in range(warmup_batches):  # tracing, thread pools, autotune
        next(it)
    rates, cpu_rates = [], []
    for _ in range(passes):
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        for _ in range(batches):
            x, _ = next(it)
        x.numpy()
        rates.append(batches * batch_size / (time.perf_counter() - start))
        cpu_rates.append(batches * batch_size / max(_cpu_seconds() - cpu_start, 1e-9))
    per_cpu_s = statistics.median(cpu_rates)
    return {"images_per_second": round(statistics.median(rates), 1), "passes": [round(r, 1) for r in rates],
            "images_per_cpu_second": round(per_cpu_s, 1),
            "images_per_second_all_cores_free_estimate": round(per_cpu_s * (os.cpu_count() or 1), 1),
            "image_size": image_size, "batch_size": batch_size, "augment": augment, "cache": cache,
            "batches_per_pass": batches}


def training_images_per_second(backbone: str, image_size: int = 112, batch_size: int = 32) -> dict:
    """What the training step consumes, in the same process and run (bench_train's median step time)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from arcface.config import TrainConfig
    from bench_train import time_steps

    config = TrainConfig(backbone=backbone, image_size=image_size, batch_size=batch_size, n_classes=1000,
                         dropout=0.0, warmup_epochs=0.0, save_path=tempfile.mkdtemp(prefix="bench_data_train_"))
    return {"backbone": backbone, **time_steps(config, warmup=2, steps=10)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=None, help="files in the validation tree (default 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="validation runs (the median is reported)")
    parser.add_argument("--passes", type=int, default=5, help="timed input-pipeline passes")
    parser.add_argument("--batches", type=int, default=60, help="batches per timed pass")
    parser.add_argument("--quick", action="store_true", help="2,000 images, fewer batches: a smoke run")
    parser.add_argument("--lfw", default=str(DEFAULT_LFW), help="folder of LFW <Name>/<Name>_NNNN.jpg")
    parser.add_argument("--training_backbone", default="ResNet50",
                        help="backbone whose training consumption the pipeline is compared with ('' to skip)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    n_images = args.images or (2_000 if args.quick else 10_000)
    batches = min(args.batches, 20) if args.quick else args.batches
    passes = min(args.passes, 3) if args.quick else args.passes

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        start = time.perf_counter()
        root = build_tree(tmp / "faces", n_images, Path(args.lfw))
        built_s = time.perf_counter() - start
        validation = validation_files_per_second(root, runs=args.runs)
        manifest = validation.pop("manifest")
        pipeline = pipeline_images_per_second(manifest, batches=batches, passes=passes)
        training = training_images_per_second(args.training_backbone) if args.training_backbone else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": {"cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "platform": platform.platform()},
        "validation": {**validation, "tree_build_s": round(built_s, 1)},
        "input_pipeline": pipeline,
    }
    if training:
        result["training_consumption"] = training
        result["pipeline_vs_training_ratio"] = round(pipeline["images_per_second"] / training["images_per_second"], 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
