"""Who may ask: `arcface serve` listens on 127.0.0.1 unless --host says otherwise, and its search answers carry
identity and score, not the enrolled photo's path (test_server.py's server, started with --return_paths, has it).

The listening sockets are read from the server process itself (psutil), so no traffic goes anywhere but
127.0.0.1."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import psutil  # kserve requires it, so the [test] extra has it
import pytest
import requests

from arcface.mlops.gallery import enroll, load_model
from arcface.mlops.serving import serve

from .conftest import running_server, sample_faces

NAME = "faces"


@pytest.fixture(scope="module")
def server(export_dir, sample_dir, tmp_path_factory):
    index = tmp_path_factory.mktemp("index") / "idx"
    enroll(load_model(export_dir), str(sample_dir / "train"), str(index))
    args = ["--model", str(export_dir), "--name", NAME, "--index", str(index)]  # no --host: the default
    with running_server(args, tmp_path_factory.mktemp("server") / "server.log") as (url, process):
        yield url, process.pid


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_server_listens_on_loopback_only_by_default(server):
    url, pid = server
    port = int(url.rsplit(":", 1)[1])
    sockets = listening(pid)
    assert ("127.0.0.1", port) in sockets, sockets
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets  # never 0.0.0.0 or ::


def test_search_answers_carry_identity_and_score_but_no_path(server, sample_dir):
    url, _ = server
    probe = base64.b64encode(Path(sample_faces(sample_dir)[0]).read_bytes()).decode()
    response = requests.post(f"{url}/v1/models/{NAME}:predict", timeout=60,
                             json={"task": "search", "top_k": 3, "instances": [{"image": probe}]})
    assert response.status_code == 200, response.text
    matches = response.json()["predictions"][0]["matches"]
    assert len(matches) == 3 and all(set(m) == {"identity", "score"} for m in matches), matches


def test_grpc_on_loopback_is_refused_since_kserve_binds_it_to_every_interface(export_dir):
    with pytest.raises(ValueError, match="KServe's gRPC server always listens on every interface"):
        serve(str(export_dir), grpc_port=9000)


def test_worker_processes_each_load_the_model_and_listen_on_loopback_only(export_dir, sample_dir, tmp_path):
    """--workers 2 (KServe's multi-process server): the workers are spawned, so each unpickles the model by
    loading it from its files; all of them share the parent's loopback socket and answer as one server does."""
    from arcface.embedding import load_embedder

    args = ["--model", str(export_dir), "--name", NAME, "--workers", "2"]
    with running_server(args, tmp_path / "server.log") as (url, process):
        workers = psutil.Process(process.pid).children(recursive=True)
        serving = [p for p in workers if listening(p.pid)]
        assert len(serving) == 2, [p.cmdline() for p in workers]
        port = int(url.rsplit(":", 1)[1])
        for pid in (process.pid, *(p.pid for p in serving)):
            assert listening(pid) == {("127.0.0.1", port)}, (pid, listening(pid))
        photo = sample_faces(sample_dir)[0]
        body = {"instances": [{"image": base64.b64encode(Path(photo).read_bytes()).decode()}]}
        # Each worker loads its model after it starts (KServe kills a worker that is slow to answer its ping),
        # and says 503 until then: the server is ready once every worker answers.
        answers, deadline = [], time.monotonic() + 120
        while len(answers) < 8 and time.monotonic() < deadline:
            answer = requests.post(f"{url}/v1/models/{NAME}:predict", json=body, timeout=60)
            assert answer.status_code in (200, 503), answer.text
            answers = [*answers, answer] if answer.status_code == 200 else []
            time.sleep(0.05 if answer.status_code == 200 else 0.5)
        assert len(answers) == 8, "the workers did not all load the model within 120 s"
        expected = load_embedder(export_dir).embed([photo])[0]
        for answer in answers:
            assert answer.json()["predictions"][0]["embedding"] == pytest.approx(expected.tolist(), abs=1e-6)
