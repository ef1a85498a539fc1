"""`arcface serve` against the bare embedder, and the gallery index, on this machine's CPU.

Two parts, one JSON (``--out``, default benchmarks/results/serve_cpu.json):

* **server**: for each of ``--models`` (``aligned``: a model trained on MTCNN-aligned crops, so every photo is
  detected and aligned first; ``none``: one that reads the whole photo), an untrained export (speed does not
  depend on the weights; by default the network the README's first command trains: its preset's backbone,
  input and embedding sizes, ``LOCAL_PRESET``)
  and the same real ORL photos (``sample/orl``; for the aligned model MTCNN must find the face in each):

  - the bare embedder in this process (``load_embedder`` + ``embed_encoded``: the server's own entrance, i.e.
    decode, orientation, crop or alignment, flip rule) at batch 1, 8, 32: images/s, the median of
    ``--bare-repeats`` timed calls after a warm-up call;
  - ``arcface serve`` in a subprocess on a free loopback port, once per ``--workers-list`` value (KServe's
    multi-process option), at 1, 4, 16, 64 concurrent clients, one face per request, v1 and v2, until
    ``--requests`` are answered or ``--seconds`` pass: requests/s, p50, p99, errors by status, and the
    micro-batcher's mean pass size (from its Prometheus counters; one worker only, since each worker process
    counts its own). Once per server, its v1 and v2 embeddings of the first photo are compared with the bare
    embedder's (cosine);
  - a summary: at 16 clients, the server's requests/s against the bare embedder's best batched images/s (the
    aim: 80 %), and its p99 against two bare passes of ``--max_batch_size`` images.
* **index**: ``--sizes`` random unit vectors (512-d): build rate and single-query latency of the exact
  (IndexFlatIP) and the approximate faiss indexes (IVF, HNSW), and their recall@1 against exact search. The
  ``--queries`` probes are what a face search sends: each is a noisy copy of one enrolled vector, at cosine
  ``--probe-cosine`` (0.7: a genuine pair of a trained model) from it, so each has one true nearest vector.
  Random vectors have no clusters, the worst case for IVF's cells; the IVF recall is also given at other
  probe counts. The HNSW build stops after ``--hnsw-seconds`` and reports how many vectors it indexed (its
  recall is then against exact search over those same vectors, with probes drawn from them).

The clients run in this process and share the cores with the server, as a sidecar or a co-located caller
would. The machine may be shared: the load average before and after is recorded with the figures.

    python benchmarks/bench_serve.py --quick
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
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
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the pipeline package, for the first command's preset
from kfp_pipeline.local import LOCAL_PRESET  # noqa: E402

DIMENSION = 512  # the gallery index's vectors
SAMPLE = REPO / "sample" / "orl" / "validation"
MODEL_NAME = "arcface"
ALIGNMENTS = {"aligned": "mtcnn", "none": "none"}
READY_TIMEOUT_S = 300
WORKER_DEATHS = 4
SUMMARY_CLIENTS = 16
PASS_COUNTERS = ("arcface_forward_passes", "arcface_batched_inputs")
DETECTOR_COUNTERS = ("arcface_detector_passes", "arcface_detected_photos")
AIM_SHARE = 0.8


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="aligned,none", help="aligned (MTCNN) and/or none")
    p.add_argument("--backbone", default=LOCAL_PRESET["backbone"], help="default: the README's first command's")
    p.add_argument("--image-size", type=int, default=LOCAL_PRESET["image_size"])
    p.add_argument("--embedding-size", type=int, default=LOCAL_PRESET["embedding_size"])
    p.add_argument("--images", type=int, default=4, help="distinct sample photos, cycled over requests")
    p.add_argument("--batches", default="1,8,32", help="bare embedder batch sizes")
    p.add_argument("--bare-repeats", type=int, default=5, help="timed calls per bare batch size (median)")
    p.add_argument("--clients", default="1,4,16,64")
    p.add_argument("--protocols", default="v1,v2")
    p.add_argument("--workers-list", default="1,2", help="`arcface serve --workers` values")
    p.add_argument("--max-batch-size", type=int, default=None, help="for the server (default: its own)")
    p.add_argument("--max-batch-wait-ms", type=float, default=None, help="for the server (default: its own)")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level (at most)")
    p.add_argument("--seconds", type=float, default=30.0, help="time per concurrency level (at most)")
    p.add_argument("--sizes", default="10000,1000000", help="index sizes (random unit vectors)")
    p.add_argument("--queries", type=int, default=200, help="probes for query latency and recall")
    p.add_argument("--probe-cosine", type=float, default=0.7, help="cosine of each probe to its enrolled vector")
    p.add_argument("--hnsw-seconds", type=float, default=600.0, help="time limit of the largest HNSW build")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--skip-index", action="store_true")
    p.add_argument("--quick", action="store_true", help="60 requests / 15 s per level, 3 bare repeats, "
                                                        "100 queries, HNSW 150 s")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_cpu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.bare_repeats = 60, 15.0, 3
        args.queries, args.hnsw_seconds = 100, 150.0
    unknown = set(args.models.split(",")) - set(ALIGNMENTS)
    if unknown or set(args.protocols.split(",")) - {"v1", "v2"}:
        p.error(f"--models takes {','.join(ALIGNMENTS)} and --protocols v1,v2 "
                f"(got {args.models}, {args.protocols})")
    return args


# ---------------------------------------------------------------------------------------------------
# Model, photos, bare embedder
# ---------------------------------------------------------------------------------------------------
def export_model(folder: Path, backbone: str, image_size: int, embedding_size: int, align: str = "none") -> Path:
    """An untrained export whose metadata records ``align`` as training writes it, so the embedder (and the
    server) align photos with MTCNN first when it is 'mtcnn'."""
    from arcface import artifacts
    from arcface.config import TrainConfig
    from arcface.export import export
    from arcface.models import build_models

    run = folder / "run"
    run.mkdir(parents=True)
    config = TrainConfig(backbone=backbone, image_size=image_size, embedding_size=embedding_size, n_classes=10,
                         align=align)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, run / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, run / artifacts.EMBEDDING_MODEL_FILE)
    config.save(run / artifacts.CONFIG_FILE)
    metadata = {"class_names": [str(i) for i in range(10)], "manifest_sha256": "bench",
                "image_size": image_size, "center_crop": 1.0}
    if align != "none":
        metadata["alignment"] = {"method": align, "image_size": image_size}
    artifacts.write_json(run / artifacts.METADATA_FILE, metadata)
    out = folder / "export"
    export(run, out, formats=["saved_model", "keras"], check_images=[])
    return out


def sample_photos(count: int) -> list[Path]:
    """One photo from each of the first ``count`` identities: different faces, as different callers send."""
    folders = sorted((p for p in SAMPLE.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))[:count]
    return [sorted(f.glob("*.pgm"))[0] for f in folders]


def describe_photos(paths: list[Path]) -> list[dict]:
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append({"file": str(path.relative_to(REPO)), "format": image.format, "mode": image.mode,
                        "size": f"{image.width}x{image.height}", "bytes": path.stat().st_size})
    return out


def check_faces(embedder, contents: list[bytes], names: list[str]) -> None:
    """An aligning model must find the face in every photo, or the figures would time the whole-image
    fallback."""
    if embedder.align == "none":
        return
    _, faceless = embedder.checked_inputs(contents, names)
    if faceless:
        raise SystemExit("bench_serve: the aligned model's detector found no usable face in "
                         + "; ".join(str(f) for f in faceless)
                         + ": pass --images with fewer photos, or other ones")


def bench_bare(embedder, contents: list[bytes], batches: list[int], repeats: int) -> list[dict]:
    """``embed_encoded`` over ``batch`` photos (cycled): the first call of a size traces it, untimed."""
    levels = []
    for batch in batches:
        images = [contents[i % len(contents)] for i in range(batch)]
        embedder.embed_encoded(images, flip_tta=False, on_no_face="fail")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            embedder.embed_encoded(images, flip_tta=False, on_no_face="fail")
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        levels.append({"batch": batch, "repeats": repeats, "batch_ms": round(1000 * median, 2),
                       "images_per_s": round(batch / median, 2),
                       "batch_ms_min_max": [round(1000 * min(times), 2), round(1000 * max(times), 2)]})
        print(f"  bare batch {batch}: {levels[-1]['images_per_s']} images/s", flush=True)
    return levels


# ---------------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def wait_for_every_worker(base: str, body: bytes, workers: int) -> None:
    """Each worker process loads its model after it starts and answers 503 until then: the server is measured
    once 8 answers per worker in a row are 200."""
    import requests

    url, wanted, streak = urls(base)["v1"], 8 * workers, 0
    deadline = time.monotonic() + READY_TIMEOUT_S
    while streak < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {workers} workers did not all answer within {READY_TIMEOUT_S} s")
        status = requests.post(url, data=body, timeout=120).status_code
        if status not in (200, 503):
            raise RuntimeError(f"warm-up request answered {status}")
        streak = streak + 1 if status == 200 else 0
        time.sleep(0.0 if status == 200 else 0.5)


def request_bodies(contents: list[bytes]) -> dict[str, list[bytes]]:
    """One face per request, serialized once: the clients' own JSON work stays out of the figures."""
    encoded = [base64.b64encode(c).decode() for c in contents]
    return {"v1": [json.dumps({"instances": [{"image": {"b64": e}}]}).encode() for e in encoded],
            "v2": [json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                           "data": [e]}]}).encode() for e in encoded]}


def urls(base: str) -> dict[str, str]:
    return {"v1": f"{base}/v1/models/{MODEL_NAME}:predict", "v2": f"{base}/v2/models/{MODEL_NAME}/infer"}


def load_level(url: str, bodies: list[bytes], clients: int, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads each send requests back to back (cycling ``bodies``) until the shared count or the
    time is used up; a non-200 answer is counted by its status, a failed connection as 'exception'."""
    import requests

    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    body = bodies[issued[0] % len(bodies)]
                    issued[0] += 1
                start = time.perf_counter()
                try:
                    status = str(session.post(url, data=body, timeout=120,
                                              headers={"Content-Type": "application/json"}).status_code)
                except requests.RequestException:
                    status = "exception"
                elapsed = time.perf_counter() - start
                with lock:
                    if status == "200":
                        latencies.append(elapsed)
                    else:
                        errors[status] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": sum(errors.values()),
            "errors_by_status": dict(errors), "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * _percentile(latencies, 50), 1),
            "p99_ms": round(1000 * _percentile(latencies, 99), 1)}


def batching_counters(base: str) -> dict[str, float] | None:
    """The micro-batchers' Prometheus counters at /metrics (the detector's only where the server has one);
    None when the server does not serve the forward pass's."""
    import requests

    try:
        response = requests.get(f"{base}/metrics", timeout=10)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    found = {}
    for line in response.text.splitlines():
        name, _, value = line.partition(" ")
        for counter in (*PASS_COUNTERS, *DETECTOR_COUNTERS):
            if name in (counter, f"{counter}_total"):
                found[counter] = float(value)
    return found if set(PASS_COUNTERS) <= set(found) else None


def mean_batches(before: dict[str, float], after: dict[str, float]) -> dict:
    """Passes over a level and their mean size, from the counters' change: the forward pass's and the
    face detector's (an aligning model's photos meet in batched detector calls too)."""
    out = {}
    for (passes, inputs), key in ((PASS_COUNTERS, "forward"), (DETECTOR_COUNTERS, "detector")):
        if passes in before and passes in after:
            n = after[passes] - before[passes]
            out[f"{key}_passes"] = int(n)
            out[f"mean_{key}_batch" if key == "detector" else "mean_batch"] = (
                round((after[inputs] - before[inputs]) / n, 2) if n else None)
    return out


def _log_tail(path: Path, lines: int = 15) -> str:
    """The server log's last lines, without TensorFlow's start-up notices that would fill it."""
    kept = [line for line in path.read_text(errors="replace").splitlines()
            if "oneDNN" not in line and "absl::InitializeLog" not in line]
    return "\n".join(kept[-lines:])


@contextlib.contextmanager
def running_server(export_dir: Path, log_path: Path, options: list[str]) -> Iterator[str]:
    """``arcface serve`` on a free loopback port until the block ends: its base URL once ready; stopped by
    pid."""
    import requests

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "wb") as log:
        command = [sys.executable, "-m", "arcface.cli", "serve", "--model", str(export_dir),
                   "--name", MODEL_NAME, "--host", "127.0.0.1", "--http_port", str(port), *options]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {_log_tail(log_path)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            # KServe's --workers restarts a worker that dies; one that dies at every start never gets ready.
            died = log_path.read_text(errors="replace").count("] died")
            if died >= WORKER_DEATHS:
                raise RuntimeError(f"server workers died {died} times before the server was ready (KServe kills "
                                   f"a worker that misses its 5 s health check): {_log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s: {_log_tail(log_path)}")
            time.sleep(0.5)
        yield base
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def consistency(base: str, bodies: dict[str, list[bytes]], reference: np.ndarray) -> dict:
    """The server's embedding of the first photo against the bare embedder's, per protocol."""
    import requests

    out = {}
    for protocol, url in urls(base).items():
        response = requests.post(url, data=bodies[protocol][0], headers={"Content-Type": "application/json"},
                                 timeout=120)
        response.raise_for_status()
        answer = response.json()
        row = (answer["predictions"][0]["embedding"] if protocol == "v1"
               else next(o for o in answer["outputs"] if o["name"] == "embedding")["data"])
        out[f"{protocol}_cosine_to_bare"] = round(_cosine(np.asarray(row, np.float64), reference), 7)
    out["within_1e-5"] = all(1 - v <= 1e-5 for v in out.values())
    return out


def server_options(args: argparse.Namespace, workers: int) -> list[str]:
    options = ["--workers", str(workers)]
    if args.max_batch_size is not None:
        options += ["--max_batch_size", str(args.max_batch_size)]
    if args.max_batch_wait_ms is not None:
        options += ["--max_batch_wait_ms", str(args.max_batch_wait_ms)]
    return options


def measure_levels(base: str, bodies: dict[str, list[bytes]], args: argparse.Namespace, workers: int) -> dict:
    """Every protocol at every client count; the mean pass size from the counters' change over each level."""
    clients = _ints(args.clients)
    result: dict = {}
    for protocol in args.protocols.split(","):
        url = urls(base)[protocol]
        # Warm-up: the first calls trace the model, and a full burst traces the larger pass shapes.
        load_level(url, bodies[protocol], 1, 3, 60)
        load_level(url, bodies[protocol], max(clients), max(clients), 120)
        levels = []
        for n in clients:
            before = batching_counters(base) if workers == 1 else None
            level = load_level(url, bodies[protocol], n, args.requests, args.seconds)
            after = batching_counters(base) if before is not None else None
            if before is not None and after is not None:
                level.update(mean_batches(before, after))
            levels.append(level)
            print(f"  workers {workers} {protocol} clients {n}: {level['requests_per_s']} req/s, "
                  f"p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms, errors {level['errors']}", flush=True)
        result[protocol] = levels
    return result


def bench_server_runs(args: argparse.Namespace, export_dir: Path, bodies: dict[str, list[bytes]],
                      reference: np.ndarray, work: Path) -> list[dict]:
    """One server per --workers value."""
    runs = []
    for workers in _ints(args.workers_list):
        options = server_options(args, workers)
        try:
            with running_server(export_dir, work / f"server-{workers}.log", options) as base:
                wait_for_every_worker(base, bodies["v1"][0], workers)
                run = {"workers": workers, "server_options": options,
                       "consistency": consistency(base, bodies, reference),
                       "metrics_served": batching_counters(base) is not None}
                if workers != 1:
                    run["batching_note"] = "each worker process counts its own passes: no mean_batch"
                run["levels"] = measure_levels(base, bodies, args, workers)
        except RuntimeError as e:  # the other workers values are still worth measuring
            run = {"workers": workers, "server_options": options, "error": str(e)}
            print(f"  workers {workers}: failed: {str(e)[:300]}", flush=True)
        runs.append(run)
    return runs


def bare_batch_ms(bare: list[dict], size: int) -> tuple[float, int]:
    """The bare time of a pass of ``size`` images: the per-image time at the nearest measured batch size
    (the smaller on a tie) times ``size``; and that batch size."""
    nearest = min(bare, key=lambda level: (abs(level["batch"] - size), level["batch"]))
    return nearest["batch_ms"] / nearest["batch"] * size, nearest["batch"]


def summarize(bare: list[dict], runs: list[dict], max_batch_size: int) -> dict:
    best = max(bare, key=lambda level: level["images_per_s"])
    batch_ms, from_batch = bare_batch_ms(bare, max_batch_size)
    two_batches = 2 * batch_ms
    summary: dict = {
        "bare_best": {"batch": best["batch"], "images_per_s": best["images_per_s"]},
        "two_batches_ms": round(two_batches, 1),
        "two_batches_from": f"bare batch {from_batch}: per image x {max_batch_size} (max_batch_size) x 2",
        "aim": f"requests/s >= {AIM_SHARE:.0%} of bare best, p99 < two batches, at {SUMMARY_CLIENTS} clients",
        "by_workers": {}}
    for run in runs:
        if "levels" not in run:
            continue
        per_protocol = {}
        for protocol, levels in run["levels"].items():
            largest = max(levels, key=lambda x: x["clients"])  # when no level has SUMMARY_CLIENTS
            level = next((x for x in levels if x["clients"] == SUMMARY_CLIENTS), largest)
            share = level["requests_per_s"] / best["images_per_s"]
            per_protocol[protocol] = {"clients": level["clients"], "requests_per_s": level["requests_per_s"],
                                      "share_of_bare_best": round(share, 3),
                                      "meets_share_aim": share >= AIM_SHARE,
                                      "p99_ms": level["p99_ms"],
                                      "p99_under_two_batches": level["p99_ms"] < two_batches}
        summary["by_workers"][str(run["workers"])] = per_protocol
    measured = {w: p for w, p in summary["by_workers"].items() if p}
    if measured:  # the workers value that served most at the summary level, over the protocols' sum
        served = {w: sum(p["requests_per_s"] for p in per.values()) for w, per in measured.items()}
        summary["best_workers"] = int(max(served, key=served.get))
    return summary


def bench_model(args: argparse.Namespace, kind: str, photos: list[Path], work: Path) -> dict:
    from arcface.embedding import load_embedder
    from arcface.mlops.serving import DEFAULT_MAX_BATCH_SIZE

    print(f"model {kind}: exporting {args.backbone} {args.image_size}", flush=True)
    export_dir = export_model(work / kind, args.backbone, args.image_size, args.embedding_size, ALIGNMENTS[kind])
    embedder = load_embedder(export_dir)
    if embedder.align != ALIGNMENTS[kind]:
        raise RuntimeError(f"the {kind} export loads with align={embedder.align}: its metadata was not read")
    contents = [p.read_bytes() for p in photos]
    check_faces(embedder, contents, [str(p) for p in photos])
    bare = bench_bare(embedder, contents, _ints(args.batches), args.bare_repeats)
    reference = embedder.embed_encoded([contents[0]], flip_tta=False, on_no_face="fail").embeddings[0]
    runs = bench_server_runs(args, export_dir, request_bodies(contents), reference.astype(np.float64),
                             work / kind)
    summary = summarize(bare, runs, args.max_batch_size or DEFAULT_MAX_BATCH_SIZE)
    return {"align": embedder.align, "bare": bare, "server": runs, "summary": summary}


def bench_server(args: argparse.Namespace, work: Path) -> dict:
    from arcface.mlops.serving import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_WAIT_MS

    photos = sample_photos(args.images)
    result = {"backbone": args.backbone, "image_size": args.image_size, "embedding_size": args.embedding_size,
              "photos": describe_photos(photos),
              "request": "one face per request: v1 {'instances': [{'image': {'b64': ...}}]}, v2 BYTES input "
                         "'image' [1]; flip_tta off, as the server embeds",
              "max_batch_size": args.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
              "max_batch_wait_ms": args.max_batch_wait_ms if args.max_batch_wait_ms is not None
              else DEFAULT_MAX_BATCH_WAIT_MS,
              "requests_per_level": args.requests, "seconds_per_level": args.seconds, "models": {}}
    for kind in args.models.split(","):
        result["models"][kind] = bench_model(args, kind, photos, work)
    return result


# ---------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------
def machine_info() -> dict:
    model, flags = "", set()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model, "avx512_bf16": "avx512_bf16" in flags,
            "amx": sorted(f for f in flags if f.startswith("amx")),
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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

    from arcface.mlops.gallery import HNSW_EF_SEARCH, build_faiss

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
    command = ["python", "benchmarks/bench_serve.py", *(sys.argv[1:] if argv is None else argv)]
    result: dict = {"command": " ".join(command), "started": _now(), "machine": machine_info()}
    if not args.skip_server:
        with tempfile.TemporaryDirectory() as work:
            result["server"] = bench_server(args, Path(work))
            summaries = {kind: model["summary"] for kind, model in result["server"]["models"].items()}
            print(json.dumps(summaries, indent=1), flush=True)
    if not args.skip_index:
        result["index"] = []
        for size in map(int, args.sizes.split(",")):
            result["index"].append(bench_index(size, args.queries, args.probe_cosine, args.hnsw_seconds))
            print(json.dumps(result["index"][-1], indent=1), flush=True)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["finished"] = _now()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
