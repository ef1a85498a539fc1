"""Overload is refused, not queued forever: past --max_queue images the server answers 503 with Retry-After at
once, stays ready, and answers normally when the flood is over."""

from __future__ import annotations

import time

import pytest
import requests

from .conftest import metric, post_concurrently, running_server, sample_faces
from .test_server import b64

NAME = "faces"
MAX_QUEUE = 4      # one 4-image request fills the queue: any request arriving while it is answered overflows
FLOOD = 24         # concurrent requests, each of MAX_QUEUE images
ANSWER_BOUND_S = 60


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    # A 100 ms batch wait holds each admitted request long enough for the others to find the queue full.
    args = ["--model", str(export_dir), "--name", NAME, "--max_instances", str(MAX_QUEUE), "--max_queue",
            str(MAX_QUEUE), "--max_batch_size", str(MAX_QUEUE), "--max_batch_wait_ms", "100"]
    with running_server(args, tmp_path_factory.mktemp("overload") / "server.log") as (url, _):
        yield url


def test_a_flood_gets_200s_and_503s_with_retry_after_then_normal_answers(server, sample_dir):
    body = {"instances": [{"image": b64(p)} for p in sample_faces(sample_dir)[:MAX_QUEUE]]}
    url = f"{server}/v1/models/{NAME}:predict"
    refused_before = metric(server, "arcface_overloaded_requests_total")
    started = time.monotonic()
    responses = post_concurrently([(url, body)] * FLOOD, timeout=ANSWER_BOUND_S)
    elapsed = time.monotonic() - started
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    assert 200 in codes and 503 in codes, codes
    for refused in (r for r in responses if r.status_code == 503):
        assert refused.headers["Retry-After"] == "1"
        assert "--max_queue" in refused.json()["detail"]
    assert metric(server, "arcface_overloaded_requests_total") - refused_before == codes.count(503)
    assert elapsed < ANSWER_BOUND_S
    # Readiness told the truth throughout (the model is loaded), and the flood left nothing behind.
    assert requests.get(f"{server}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{server}/v1/models/{NAME}", timeout=10).json() == {"name": NAME, "ready": True}
    after = requests.post(url, json=body, timeout=ANSWER_BOUND_S)
    assert after.status_code == 200 and len(after.json()["predictions"]) == MAX_QUEUE


def test_a_queue_below_one_request_is_refused_at_start(export_dir):
    from arcface.mlops.serving import ArcFaceModel

    with pytest.raises(ValueError, match="raise --max_queue or lower --max_instances"):
        ArcFaceModel(NAME, str(export_dir), max_instances=64, max_queue=8)
