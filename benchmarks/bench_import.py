"""`arcface import`: an insightface IResNet (ONNX) against onnxruntime on real faces, and its cost.

    python benchmarks/bench_import.py --out benchmarks/results/import_parity.json
    python benchmarks/bench_import.py --onnx ~/models/buffalo_l/w600k_r50.onnx --out my_parity.json

Without --onnx the source is the tests' stand-in (tests/models/test_insightface_import.py): arcface_torch's
IResNet50 as torch2onnx writes it, with random weights and BN statistics (nothing is downloaded here). The faces
are ORL photos (../shared/data/faces/orl_faces, else the bundled sample), one per person, cropped and resized as
every entrance of this project does. onnxruntime is fed as insightface feeds it (RGB, (x - 127.5) / 127.5,
NCHW); this project's model through its own embedder. Figures: the cosine of each face's two embeddings and the
largest difference of one dimension, both after L2 normalisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces"))
sys.path.insert(0, str(REPO))


def faces(limit: int) -> list[str]:
    root = SHARED / "orl_faces" if (SHARED / "orl_faces").is_dir() else REPO / "sample" / "orl" / "train"
    people = sorted(p for p in root.iterdir() if p.is_dir())
    return [str(sorted(p.iterdir())[0]) for p in people[:limit]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="an insightface IResNet .onnx (default: the tests' random-weight IResNet50)")
    parser.add_argument("--faces", type=int, default=40, help="faces compared (one per ORL person)")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from arcface import __version__
    from arcface.data.preprocess import face_pixels
    from arcface.embedding import load_embedder
    from arcface.models.insightface import import_onnx
    from tests.models.test_insightface_import import iresnet_onnx, onnxruntime_embeddings

    work = Path(tempfile.mkdtemp(prefix="arcface-import-"))
    source = args.onnx or iresnet_onnx(work / "iresnet50.onnx")
    started = time.perf_counter()
    result = import_onnx(source, work / "imported")
    import_seconds = time.perf_counter() - started
    paths = faces(args.faces)
    pixels = np.stack([face_pixels(tf.constant(Path(p).read_bytes()), 112).numpy() for p in paths])
    reference = onnxruntime_embeddings(str(source), pixels)
    ours = load_embedder(str(work / "imported"), align="none").embed(paths)
    cosines = np.sum(reference * ours, axis=1)
    different = (reference @ reference.T)[~np.eye(len(paths), dtype=bool)]
    figures = {"benchmark": "import_parity", "package_version": __version__,
               "source": args.onnx or "tests' stand-in: arcface_torch iresnet50 as torch2onnx writes it, random "
                                      "weights (seed 0)",
               "backbone": result.backbone, "faces": len(paths), "faces_from": str(Path(paths[0]).parents[1]),
               "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()),
               "max_abs_diff": float(np.abs(reference - ours).max()),
               "mean_cosine_between_different_faces": float(different.mean()),
               "import_seconds": round(import_seconds, 1), "import_time_parity_check": result.parity,
               "cpu": {"model": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            figures["cpu"]["model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
