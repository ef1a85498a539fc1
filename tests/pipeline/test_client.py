"""submit and schedule against the real kfp.Client with only its HTTP transport replaced.

urllib3's PoolManager.request is swapped for a fake server that records each request and answers with
canned JSON, so everything above it (kfp.Client, the generated kfp_server_api, serialization, auth headers)
runs as it would against a KFP deployment.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
import urllib3

import pipeline
from arcface import config as cfg

HOST = "http://kfp.example.test:8080"


class FakeServer:
    def __init__(self):
        self.requests: list[dict] = []

    def __call__(self, pool, method, url, fields=None, headers=None, body=None, **kwargs):
        parsed = urlparse(url)
        record = {"method": method, "path": parsed.path, "query": parse_qs(parsed.query),
                  "headers": {k.lower(): v for k, v in (headers or {}).items()}, "body": json.loads(body) if body else None}
        self.requests.append(record)
        path = parsed.path
        if path.endswith("/healthz"):
            answer = {"multi_user": False}
        elif path == "/apis/v2beta1/experiments" and method == "GET":
            answer = {"experiments": [], "total_size": 0}
        elif path == "/apis/v2beta1/experiments" and method == "POST":
            answer = {"experiment_id": "exp-1", "display_name": record["body"]["display_name"]}
        elif path == "/apis/v2beta1/runs" and method == "POST":
            answer = {"run_id": "run-1", "display_name": record["body"]["display_name"], "experiment_id": "exp-1"}
        elif path == "/apis/v2beta1/recurringruns" and method == "POST":
            answer = {"recurring_run_id": "rr-1", **record["body"]}
        else:
            return urllib3.HTTPResponse(body=b'{"error": "not found"}', status=404, reason="Not Found",
                                        headers={"Content-Type": "application/json"}, preload_content=True)
        return urllib3.HTTPResponse(body=json.dumps(answer).encode(), status=200, reason="OK",
                                    headers={"Content-Type": "application/json"}, preload_content=True)

    def one(self, method: str, path: str) -> dict:
        found = [r for r in self.requests if r["method"] == method and r["path"] == path]
        assert len(found) == 1, (method, path, [(r["method"], r["path"]) for r in self.requests])
        return found[0]


@pytest.fixture
def server(monkeypatch) -> FakeServer:
    fake = FakeServer()
    def request(pool, method, url, **kwargs):  # a plain function, so it binds like the method it replaces
        return fake(pool, method, url, **kwargs)

    monkeypatch.setattr(urllib3.PoolManager, "request", request)
    return fake


def spec_tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def test_submit_sends_the_compiled_spec_and_parameters(server, capsys):
    code = pipeline.main(["submit", "--host", HOST, "--token", "T0KEN", "--namespace", "team-a", "--experiment",
                          "faces", "--param", "data_root=/data/faces", "--param", "epochs=20",
                          "--max_minutes", "60", "--gpu", "nvidia.com/gpu"])
    assert code == 0, capsys.readouterr().err
    assert "submitted run run-1" in capsys.readouterr().out
    experiment = server.one("POST", "/apis/v2beta1/experiments")["body"]
    assert experiment == {"display_name": "faces", "namespace": "team-a"}
    run = server.one("POST", "/apis/v2beta1/runs")
    assert run["headers"]["authorization"] == "Bearer T0KEN"
    body = run["body"]
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"data_root": "/data/faces", "epochs": 20, "max_minutes": 60.0}
    spec = body["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == pipeline.PIPELINE_NAME
    assert set(spec_tasks(spec)) == {"validate-data", "align-faces", "train-model", "evaluate-model",
                                     "quality-gate", "condition-1"}
    # The compiled caching settings reach the server untouched (submit never passes enable_caching).
    assert spec_tasks(spec)["train-model"]["cachingOptions"] == {}
    train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) >= {f.name for f in cfg.fields()}


def test_schedule_creates_a_cron_recurring_run(server, capsys):
    code = pipeline.main(["schedule", "--host", HOST, "--cron", "0 0 3 * * 0", "--max_minutes", "60",
                          "--param", "data_root=/data/faces", "--pvc", "faces"])
    assert code == 0, capsys.readouterr().err
    body = server.one("POST", "/apis/v2beta1/recurringruns")["body"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"data_root": "/data/faces", "max_minutes": 60.0}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == pipeline.PIPELINE_NAME
    platform = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    assert "pvcMount" in platform["deploymentSpec"]["executors"]["exec-train-model"]
    assert "created recurring run rr-1" in capsys.readouterr().out


def test_schedule_every_uses_an_interval(server):
    assert pipeline.main(["schedule", "--host", HOST, "--every", "7d"]) == 0
    body = server.one("POST", "/apis/v2beta1/recurringruns")["body"]
    assert body["trigger"] == {"periodic_schedule": {"interval_second": str(7 * 86400)}} or \
        body["trigger"] == {"periodic_schedule": {"interval_second": 7 * 86400}}
    assert body["no_catchup"] is True


def test_bad_parameters_never_reach_the_server(server, capsys):
    assert pipeline.main(["submit", "--host", HOST, "--param", "penalty=-1"]) == 2
    assert "--penalty=-1.0 is out of range" in capsys.readouterr().err
    assert pipeline.main(["schedule", "--host", HOST, "--cron", "0 3 * * 0"]) == 2
    assert "prefix a seconds field" in capsys.readouterr().err
    assert not [r for r in server.requests if r["method"] == "POST"]
