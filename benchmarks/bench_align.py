"""Face alignment throughput on this CPU: MTCNN detection + 5-point warp, batched vs one image per call, and
the second run over unchanged files (every crop reused from the cache by content sha256).

    python benchmarks/bench_align.py --out benchmarks/results/align_cpu.json

Images: the first --images LFW deep-funneled photos (250x250) when ../shared/data/faces is there, else the
bundled ORL sample (92x112). Each figure is the median of --runs runs, after one warm-up call (MTCNN builds
its networks and traces on first use). The quality comparison (aligned vs centre-cropped on LFW, same recipe
and budget as the README's table) is bench_quality.py's `aligned` variant:

    python benchmarks/bench_quality.py --dataset lfw --variants preset,aligned --out benchmarks/results/quality_lfw_aligned.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces"))


def pick_images(n: int) -> tuple[str, list[Path]]:
    lfw = SHARED / "lfw_deepfunneled"
    if lfw.is_dir():
        return "lfw_deepfunneled", sorted(lfw.glob("*/*.jpg"))[:n]
    return "sample/orl", sorted((REPO / "sample" / "orl").glob("*/*/*"))[:n]


def detection_rates(detector, image_size: int) -> dict[str, dict[str, int]]:
    """Faces found (a face kept by the step's rule) in the bundled sample and, where present, the ORL set."""
    from arcface.data.align import align_images, upright_image

    sets = {"sample_orl": sorted((REPO / "sample" / "orl").glob("*/*/*.*"))}
    if (SHARED / "orl_faces").is_dir():
        sets["orl"] = sorted((SHARED / "orl_faces").glob("*/*.pgm"))
    rates = {}
    for name, paths in sets.items():
        found = 0
        for start in range(0, len(paths), 64):
            images = [upright_image(p.read_bytes()) for p in paths[start:start + 64]]
            found += sum(r.usable for r in align_images(images, image_size, detector))
        rates[name] = {"images": len(paths), "faces_found": found}
    return rates


def timed(function, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]

    import logging

    from arcface.data import run_validation

    logging.getLogger("arcface").setLevel(logging.ERROR)  # the tree of links has one-sided identities; no matter
    from arcface.data.align import MtcnnDetector, align_images, align_manifest, upright_image

    source, paths = pick_images(args.images)
    images = [upright_image(p.read_bytes()) for p in paths]
    batched, single = MtcnnDetector(batch_size=16), MtcnnDetector(batch_size=1)
    align_images(images[:2], args.image_size, batched)  # warm-up: networks built, functions traced
    align_images(images[:1], args.image_size, single)
    found = sum(r.usable for r in align_images(images, args.image_size, batched))
    batch_runs = timed(lambda: align_images(images, args.image_size, batched), args.runs)
    single_runs = timed(lambda: [align_images([im], args.image_size, single) for im in images], args.runs)

    # The align step over a manifest, then again over the same files with the first output as its cache.
    work = Path(tempfile.mkdtemp(prefix="arcface-bench-align-"))
    try:
        for i, path in enumerate(paths):  # a train/validation tree of links to the images (never copies)
            split = "train" if i % 4 else "validation"
            folder = work / "data" / split / path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(path, folder / path.name)
        for split in ("train", "validation"):  # every identity needs a training image to be a class
            for identity in os.listdir(work / "data" / split):
                other = "validation" if split == "train" else "train"
                (work / "data" / other / identity).mkdir(parents=True, exist_ok=True)
        manifest = run_validation(str(work / "data" / "train"), str(work / "data" / "validation"),
                                  str(work / "validated")).manifest
        first_start = time.perf_counter()
        first = align_manifest(manifest, str(work / "first"), image_size=args.image_size, detector=batched)
        first_s = time.perf_counter() - first_start
        second_runs, second = [], None
        for run in range(args.runs):
            start = time.perf_counter()
            second = align_manifest(manifest, str(work / f"second{run}"), image_size=args.image_size,
                                    cache_dir=str(work / "first"), detector=batched)
            second_runs.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rates = detection_rates(batched, args.image_size)
    n = len(images)
    result = {
        "benchmark": "align", "detector": batched.version, "images": n, "source": source,
        "image_shapes": sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images}), "crop_size": args.image_size,
        "faces_found": found, "detection_rate": rates,
        "machine": {"cores": os.cpu_count(), "load_average_1m_start_end": None, "python": platform.python_version()},
        "batched_16": {"runs_s": [round(s, 3) for s in batch_runs],
                       "images_per_second": round(n / statistics.median(batch_runs), 1)},
        "one_image_per_call": {"runs_s": [round(s, 3) for s in single_runs],
                               "images_per_second": round(n / statistics.median(single_runs), 1)},
        "align_step": {"manifest_images": len(manifest.rows), "first_run_s": round(first_s, 3),
                       "first_run_aligned": first.aligned,
                       "first_run_images_per_second": round(len(manifest.rows) / first_s, 1),
                       "second_run_s": [round(s, 3) for s in second_runs],
                       "second_run_aligned": second.aligned, "second_run_reused": second.reused,
                       "second_run_images_per_second": round(len(manifest.rows) / statistics.median(second_runs), 1)},
    }
    result["machine"]["load_average_1m_start_end"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
