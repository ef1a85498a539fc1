"""submit and schedule against the real kfp.Client with only its HTTP transport replaced.

urllib3's PoolManager.request is swapped for a fake server that records each request and answers with
canned JSON, so everything above it (kfp.Client, the generated kfp_server_api, serialization, auth headers)
runs as it would against a KFP deployment.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlparse

import pytest
import urllib3
import yaml

import arcface
import pipeline
from arcface import config as cfg
from kfp_pipeline import dag

HOST = "http://kfp.example.test:8080"


class FakeServer:
    """A KFP API that keeps what it is sent: pipelines, their versions (with the uploaded spec), recurring runs."""

    def __init__(self):
        self.requests: list[dict] = []
        self.pipelines: dict[str, str] = {}  # id -> name
        self.versions: list[dict] = []  # {"pipeline_id", "pipeline_version_id", "display_name", "spec"}
        self.recurring_runs: dict[str, dict] = {}

    def __call__(self, pool, method, url, fields=None, headers=None, body=None, **kwargs):
        parsed = urlparse(url)
        record = {"method": method, "path": parsed.path, "query": parse_qs(parsed.query),
                  "headers": {k.lower(): v for k, v in (headers or {}).items()}, "body": json.loads(body) if body else None}
        self.requests.append(record)
        path, query = parsed.path, {k: v[0] for k, v in parse_qs(parsed.query).items()}
        if method == "GET" and fields:  # the generated client sends a GET's query parameters as fields
            query.update({k: str(v) for k, v in fields})
        name_filter = json.loads(query["filter"])["predicates"][0]["stringValue"] if "filter" in query else None
        if path.endswith("/healthz"):
            answer = {"multi_user": False}
        elif path == "/apis/v2beta1/experiments" and method == "GET":
            answer = {"experiments": [], "total_size": 0}
        elif path == "/apis/v2beta1/experiments" and method == "POST":
            answer = {"experiment_id": "exp-1", "display_name": record["body"]["display_name"]}
        elif path == "/apis/v2beta1/pipelines" and method == "GET":
            answer = {"pipelines": [{"pipeline_id": i, "display_name": n} for i, n in self.pipelines.items()
                                    if n == name_filter]}
        elif path == "/apis/v2beta1/pipelines/upload" and method == "POST":
            pipeline_id = f"p-{len(self.pipelines) + 1}"
            self.pipelines[pipeline_id] = query["name"]
            self._add_version(pipeline_id, query["name"], fields)  # KFP makes a first version of an upload
            answer = {"pipeline_id": pipeline_id, "display_name": query["name"]}
        elif path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            answer = self._add_version(query["pipelineid"], query["name"], fields)
        elif path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions") and method == "GET":
            pipeline_id = path.split("/")[-2]
            answer = {"pipeline_versions": [{k: v for k, v in version.items() if k != "spec"} for version in
                                            self.versions if version["pipeline_id"] == pipeline_id
                                            and version["display_name"] == name_filter]}
        elif path == "/apis/v2beta1/runs" and method == "POST":
            answer = {"run_id": "run-1", "display_name": record["body"]["display_name"], "experiment_id": "exp-1"}
        elif path == "/apis/v2beta1/recurringruns" and method == "POST":
            recurring_run_id = f"rr-{len(self.requests)}"
            self.recurring_runs[recurring_run_id] = record["body"]
            answer = {"recurring_run_id": recurring_run_id, **record["body"]}
        elif path == "/apis/v2beta1/recurringruns" and method == "GET":
            answer = {"recurringRuns": [{"recurring_run_id": i, **r} for i, r in self.recurring_runs.items()
                                        if r["display_name"] == name_filter
                                        and r["experiment_id"] == query["experiment_id"]]}
        elif path.startswith("/apis/v2beta1/recurringruns/") and method == "DELETE":
            del self.recurring_runs[path.rsplit("/", 1)[1]]
            answer = {}
        else:
            return urllib3.HTTPResponse(body=b'{"error": "not found"}', status=404, reason="Not Found",
                                        headers={"Content-Type": "application/json"}, preload_content=True)
        return urllib3.HTTPResponse(body=json.dumps(answer).encode(), status=200, reason="OK",
                                    headers={"Content-Type": "application/json"}, preload_content=True)

    def _add_version(self, pipeline_id: str, name: str, fields) -> dict:
        (_, (_, data, _)), = fields  # the multipart upload: one file
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": f"v-{len(self.versions) + 1}",
                   "display_name": name, "spec": data}
        self.versions.append(version)
        return {k: v for k, v in version.items() if k != "spec"}

    def one(self, method: str, path: str) -> dict:
        found = [r for r in self.requests if r["method"] == method and r["path"] == path]
        assert len(found) == 1, (method, path, [(r["method"], r["path"]) for r in self.requests])
        return found[0]

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


@pytest.fixture
def server(monkeypatch) -> FakeServer:
    fake = FakeServer()
    def request(pool, method, url, **kwargs):  # a plain function, so it binds like the method it replaces
        return fake(pool, method, url, **kwargs)

    monkeypatch.setattr(urllib3.PoolManager, "request", request)
    return fake


def spec_tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def uploaded_spec(server: FakeServer, version_id: str) -> dict:
    (version,) = [v for v in server.versions if v["pipeline_version_id"] == version_id]
    return yaml.safe_load(version["spec"])


def expected_version_name(spec_bytes: bytes) -> str:
    """The package version and the compiled spec's sha256 (computed here, independently of cluster.py)."""
    return f"{arcface.__version__}-{hashlib.sha256(spec_bytes).hexdigest()[:12]}"


def test_submit_uploads_the_pipeline_once_and_runs_a_version_of_it(server, capsys):
    argv = ["submit", "--host", HOST, "--token", "T0KEN", "--namespace", "team-a", "--experiment", "faces",
            "--param", "data_root=/data/faces", "--param", "epochs=20", "--max_minutes", "60",
            "--gpu", "nvidia.com/gpu"]
    code = pipeline.main(argv)
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "submitted run run-1" in out
    experiment = server.one("POST", "/apis/v2beta1/experiments")["body"]
    assert experiment == {"display_name": "faces", "namespace": "team-a"}
    upload = server.one("POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == [dag.PIPELINE_NAME]
    (version_upload,) = server.posts("/apis/v2beta1/pipelines/upload_version")
    (named,) = [v for v in server.versions if v["display_name"] == version_upload["query"]["name"][0]]
    assert named["display_name"] == expected_version_name(named["spec"])
    assert f"pipeline version {named['display_name']} (uploaded)" in out
    run = server.one("POST", "/apis/v2beta1/runs")
    assert run["headers"]["authorization"] == "Bearer T0KEN"
    body = run["body"]
    assert body["experiment_id"] == "exp-1"
    assert body["pipeline_version_reference"] == {"pipeline_id": "p-1",
                                                  "pipeline_version_id": named["pipeline_version_id"]}
    assert body["runtime_config"]["parameters"] == {"data_root": "/data/faces", "epochs": 20, "max_minutes": 60.0}
    spec = uploaded_spec(server, named["pipeline_version_id"])
    assert spec["pipelineInfo"]["name"] == dag.PIPELINE_NAME
    assert set(spec_tasks(spec)) == {"exit-handler-1", "report-run-end"}
    steps = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(steps) == {"validate-data", "align-faces", "train-model", "evaluate-model", "quality-gate",
                          "condition-2"}
    # The compiled caching settings reach the server untouched (submit never passes enable_caching).
    assert steps["train-model"]["cachingOptions"] == {}
    train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) >= {f.name for f in cfg.fields()}

    # The same spec again: no upload at all, the same version runs. Another spec: a new version, same pipeline.
    assert pipeline.main(argv) == 0
    assert "(already there)" in capsys.readouterr().out
    assert len(server.posts("/apis/v2beta1/pipelines/upload")) == 1
    assert len(server.posts("/apis/v2beta1/pipelines/upload_version")) == 1
    assert pipeline.main([a if a != "nvidia.com/gpu" else "amd.com/gpu" for a in argv]) == 0
    assert len(server.posts("/apis/v2beta1/pipelines/upload")) == 1 and len(server.pipelines) == 1
    assert len(server.posts("/apis/v2beta1/pipelines/upload_version")) == 2
    last_run = server.posts("/apis/v2beta1/runs")[-1]["body"]["pipeline_version_reference"]
    assert last_run["pipeline_version_id"] == server.versions[-1]["pipeline_version_id"] != named["pipeline_version_id"]


def test_schedule_creates_a_cron_recurring_run_of_a_pipeline_version(server, capsys):
    code = pipeline.main(["schedule", "--host", HOST, "--cron", "0 0 3 * * 0", "--max_minutes", "60",
                          "--param", "data_root=/data/faces", "--param", "model_store=/data/models", "--pvc", "faces"])
    assert code == 0, capsys.readouterr().err
    body = server.one("POST", "/apis/v2beta1/recurringruns")["body"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"data_root": "/data/faces", "model_store": "/data/models",
                                                    "max_minutes": 60.0}
    version_id = body["pipeline_version_reference"]["pipeline_version_id"]
    spec_bytes = [v["spec"] for v in server.versions if v["pipeline_version_id"] == version_id][0]
    pipeline_spec, platform = list(yaml.safe_load_all(spec_bytes))
    assert pipeline_spec["pipelineInfo"]["name"] == dag.PIPELINE_NAME
    assert "pvcMount" in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-model"]
    assert f"created recurring run {next(iter(server.recurring_runs))}" in capsys.readouterr().out


def test_schedule_update_moves_the_recurring_run_to_the_new_version(server, capsys):
    assert pipeline.main(["schedule", "--host", HOST, "--every", "7d"]) == 0
    (old_id,) = server.recurring_runs
    old_version = server.recurring_runs[old_id]["pipeline_version_reference"]["pipeline_version_id"]
    # Scheduling the same name again without --update would train twice a week into the same store.
    assert pipeline.main(["schedule", "--host", HOST, "--every", "7d", "--pvc", "faces"]) == 2
    assert f"named 'arcface-retrain' exists already in experiment 'arcface' ({old_id}); pass --update" in \
        capsys.readouterr().err
    assert pipeline.main(["schedule", "--host", HOST, "--every", "7d", "--pvc", "faces", "--update"]) == 0
    assert f"replacing {old_id}" in capsys.readouterr().out
    (new_id,) = server.recurring_runs
    new = server.recurring_runs[new_id]
    assert new_id != old_id and new["display_name"] == "arcface-retrain"
    assert new["pipeline_version_reference"]["pipeline_version_id"] != old_version
    assert new["pipeline_version_reference"]["pipeline_version_id"] == server.versions[-1]["pipeline_version_id"]
    # Created before the old one was deleted: never a moment without a schedule.
    order = [(r["method"], r["path"]) for r in server.requests]
    assert order.index(("DELETE", f"/apis/v2beta1/recurringruns/{old_id}")) > \
        max(i for i, r in enumerate(order) if r == ("POST", "/apis/v2beta1/recurringruns"))
    assert pipeline.main(["schedule", "--host", HOST, "--every", "7d", "--name", "nightly", "--update"]) == 2
    assert "no recurring run named 'nightly'" in capsys.readouterr().err


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
