"""bench_serve.py's server part, run tiny on a real `arcface serve`: every level measured without errors, the
bare embedder timed at every batch size, and the embedding the server returns equal to the bare one."""

from __future__ import annotations

import json

BENCHMARK = "bench_serve"


def test_bare_batch_time_comes_from_the_nearest_measured_size(bench):
    bare = [{"batch": 1, "batch_ms": 10.0}, {"batch": 8, "batch_ms": 40.0}, {"batch": 32, "batch_ms": 128.0}]
    assert bench.bare_batch_ms(bare, 16) == (80.0, 8)  # 8 is nearer than 32: 5 ms an image x 16
    assert bench.bare_batch_ms(bare, 32) == (128.0, 32)
    assert bench.bare_batch_ms(bare, 2) == (20.0, 1)


def test_a_tiny_run_measures_every_level(bench, tmp_path):
    out = tmp_path / "serve.json"
    assert bench.main(["--models", "none", "--backbone", "TinyFaceNet", "--image-size", "64", "--images", "2",
                       "--batches", "1,8,32", "--bare-repeats", "2", "--clients", "1,4",
                       "--protocols", "v1,v2", "--workers-list", "1", "--requests", "8", "--seconds", "30",
                       "--skip-index", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    server = result["server"]
    assert [p["size"] for p in server["photos"]] == ["92x112", "92x112"]
    model = server["models"]["none"]
    assert model["align"] == "none"
    assert [level["batch"] for level in model["bare"]] == [1, 8, 32]
    assert all(level["images_per_s"] > 0 for level in model["bare"])

    (run,) = model["server"]
    assert run["workers"] == 1 and "error" not in run, run.get("error")
    assert run["consistency"]["within_1e-5"], run["consistency"]
    assert run["consistency"]["v1_cosine_to_bare"] >= 1 - 1e-5
    for protocol in ("v1", "v2"):
        levels = run["levels"][protocol]
        assert [level["clients"] for level in levels] == [1, 4]
        for level in levels:
            assert level["errors"] == 0, level
            assert level["requests"] == 8
            assert level["requests_per_s"] > 0
            assert level["p50_ms"] <= level["p99_ms"]
            if run["metrics_served"]:
                assert level["mean_batch"] >= 1
    summary = model["summary"]
    assert summary["bare_best"]["images_per_s"] == max(level["images_per_s"] for level in model["bare"])
    assert set(summary["by_workers"]["1"]) == {"v1", "v2"}
    assert summary["by_workers"]["1"]["v1"]["clients"] == 4  # no 16-client level: the largest is summarized
    assert result["machine"]["load_average_after"] and result["finished"] >= result["started"]
