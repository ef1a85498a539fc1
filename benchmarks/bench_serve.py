"""`arcface serve` and the gallery index on this machine's CPU: request rate and latency, index build and query.

Two parts, one JSON (``--out``, default benchmarks/results/serve_cpu.json):

* **server**: exports an untrained model (speed does not depend on the weights), starts ``arcface serve`` on a
  free loopback port, and for 1, 4 and 16 concurrent clients sends v1 requests of one face each (base64
  JSON) until ``--requests`` are answered or ``--seconds`` pass: requests/s, p50 and p99 latency. No
  server-side batching: each request is one forward pass (KServe's batcher is a cluster-side agent).
* **index**: ``--sizes`` random unit vectors (512-d): build rate and single-query latency of the exact
  (IndexFlatIP) and the approximate faiss indexes (IVF, HNSW), and their recall@1 against exact search. The
  ``--queries`` probes are what a face search sends: each is a noisy copy of one enrolled vector, at cosine
  ``--probe-cosine`` (0.7: a genuine pair of a trained model) from it, so each has one true nearest vector.
  Random vectors have no clusters, the worst case for IVF's cells; the IVF recall is also given at other
  probe counts. The HNSW build stops after ``--hnsw-seconds`` and reports how many vectors it indexed (its
  recall is then against exact search over those same vectors, with probes drawn from them).

The machine may be shared: the load average before and after is recorded with the figures.

    python benchmarks/bench_serve.py --quick
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIMENSION = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="MobileFaceNet")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level (at most)")
    p.add_argument("--seconds", type=float, default=30.0, help="time per concurrency level (at most)")
    p.add_argument("--sizes", default="10000,1000000", help="index sizes (random unit vectors)")
    p.add_argument("--queries", type=int, default=200, help="probes for query latency and recall")
    p.add_argument("--probe-cosine", type=float, default=0.7, help="cosine of each probe to its enrolled vector")
    p.add_argument("--hnsw-seconds", type=float, default=600.0, help="time limit of the largest HNSW build")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--skip-index", action="store_true")
    p.add_argument("--quick", action="store_true", help="60 requests / 15 s per level, 100 queries, HNSW 150 s")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_cpu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.queries, args.hnsw_seconds = 60, 15.0, 100, 150.0
    return args


# ---------------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------------
def export_model(folder: Path, backbone: str, image_size: int) -> Path:
    from arcface import artifacts
    from arcface.config import TrainConfig
    from arcface.export import export
    from arcface.models import build_models

    run = folder / "run"
    run.mkdir(parents=True)
    config = TrainConfig(backbone=backbone, image_size=image_size, embedding_size=DIMENSION, n_classes=10)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, run / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, run / artifacts.EMBEDDING_MODEL_FILE)
    config.save(run / artifacts.CONFIG_FILE)
    artifacts.write_json(run / artifacts.METADATA_FILE, {"class_names": [str(i) for i in range(10)],
                                                         "manifest_sha256": "bench", "image_size": image_size,
                                                         "center_crop": 1.0})
    out = folder / "export"
    export(run, out, formats=["saved_model", "keras"], check_images=[])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_level(url: str, body: dict, clients: int, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads each send requests back to back until the shared count or the time is used up."""
    import requests

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        nonlocal errors
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                start = time.perf_counter()
                ok = session.post(url, json=body, timeout=120).status_code == 200
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed) if ok else None
                    errors += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * _percentile(latencies, 50), 1), "p99_ms": round(1000 * _percentile(latencies, 99), 1)}


def bench_server(args: argparse.Namespace, work: Path) -> dict:
    import requests

    export_dir = export_model(work, args.backbone, args.image_size)
    port = _free_port()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - open for the server's lifetime
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "arcface.cli", "serve", "--model", str(export_dir),
                                "--http_port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready after 300 s")
            time.sleep(0.5)
        face = sorted((REPO / "sample" / "orl" / "validation").rglob("*.pgm"))[0]
        body = {"instances": [{"image": {"b64": base64.b64encode(face.read_bytes()).decode()}}]}
        url = f"{base}/v1/models/arcface:predict"
        load_level(url, body, 1, 5, 30)  # warm-up: the first calls trace the model
        levels = [load_level(url, body, int(c), args.requests, args.seconds) for c in args.clients.split(",")]
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    return {"backbone": args.backbone, "image_size": args.image_size, "embedding_size": DIMENSION,
            "request": "v1, one 92x112 PGM face per request, base64 JSON", "server_side_batching": False,
            "levels": levels}


# ---------------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------------
def random_unit(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIMENSION), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def near_copies(vectors: np.ndarray, n: int, cosine: float, seed: int) -> np.ndarray:
    """``n`` probes, each a copy of a random row of ``vectors`` plus isotropic noise, at ``cosine`` from it."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), n, replace=False)
    spread = np.sqrt((1.0 / cosine ** 2 - 1.0) / DIMENSION)  # noise norm tan(angle): cos = 1/sqrt(1+|e|^2)
    x = vectors[rows] + rng.standard_normal((n, DIMENSION), dtype=np.float32) * spread
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _query_ms(index, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], 1)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def _recall(index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, 1)
    return round(float(np.mean(found[:, 0] == truth)), 4)


def bench_index(size: int, n_queries: int, cosine: float, hnsw_seconds: float) -> dict:
    import faiss

    from arcface.gallery import HNSW_EF_SEARCH, build_faiss

    vectors = random_unit(size, seed=size)
    queries = near_copies(vectors, n_queries, cosine, seed=1)
    start = time.perf_counter()
    exact = build_faiss(vectors, "exact")
    exact_build = time.perf_counter() - start
    _, truth = exact.search(queries, 1)
    truth = truth[:, 0]
    result = {"vectors": size, "dimension": DIMENSION, "faiss_threads": faiss.omp_get_max_threads(),
              "probes": {"count": n_queries, "cosine_to_source": cosine},
              "exact": {"build_s": round(exact_build, 3), "vectors_per_s": round(size / exact_build),
                        "query_ms_p50": _query_ms(exact, queries[:50])}}
    start = time.perf_counter()
    ivf = build_faiss(vectors, "ivf")
    ivf_build = time.perf_counter() - start
    default_probes = ivf.nprobe
    result["ivf"] = {"cells": ivf.nlist, "probes": default_probes, "build_s": round(ivf_build, 1),
                     "vectors_per_s": round(size / ivf_build), "query_ms_p50": _query_ms(ivf, queries[:50]),
                     "recall_at_1_vs_exact": _recall(ivf, queries, truth), "by_probes": {}}
    for probes in sorted({max(1, ivf.nlist // 32), max(1, ivf.nlist // 16), max(1, ivf.nlist // 4)}):
        ivf.nprobe = probes
        result["ivf"]["by_probes"][str(probes)] = {"recall_at_1_vs_exact": _recall(ivf, queries, truth),
                                                   "query_ms_p50": _query_ms(ivf, queries[:50])}
    del ivf
    hnsw = build_faiss(vectors[:0], "hnsw")
    hnsw.hnsw.efSearch = HNSW_EF_SEARCH
    start, added, chunk = time.perf_counter(), 0, 10_000
    while added < size and time.perf_counter() - start < hnsw_seconds:
        hnsw.add(vectors[added:added + chunk])
        added += len(vectors[added:added + chunk])
    hnsw_build = time.perf_counter() - start
    if added < size:  # recall over the vectors the graph holds, with probes drawn from them
        held = vectors[:added]
        hnsw_queries = near_copies(held, n_queries, cosine, seed=1)
        _, hnsw_truth = build_faiss(held, "exact").search(hnsw_queries, 1)
        hnsw_truth = hnsw_truth[:, 0]
    else:
        hnsw_queries, hnsw_truth = queries, truth
    result["hnsw"] = {"M": hnsw.hnsw.nb_neighbors(1), "ef_search": HNSW_EF_SEARCH, "indexed": added,
                      "complete": added == size, "build_s": round(hnsw_build, 1),
                      "vectors_per_s": round(added / hnsw_build),
                      "query_ms_p50": _query_ms(hnsw, hnsw_queries[:50]),
                      "recall_at_1_vs_exact": _recall(hnsw, hnsw_queries, hnsw_truth)}
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "load_average_before": [round(x, 2) for x in os.getloadavg()]}}
    if not args.skip_server:
        with tempfile.TemporaryDirectory() as work:
            result["server"] = bench_server(args, Path(work))
            print(json.dumps(result["server"], indent=1), flush=True)
    if not args.skip_index:
        result["index"] = []
        for size in map(int, args.sizes.split(",")):
            result["index"].append(bench_index(size, args.queries, args.probe_cosine, args.hnsw_seconds))
            print(json.dumps(result["index"][-1], indent=1), flush=True)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
