"""launch_tfjob and arcface.mlops.tfjob against a fake Kubernetes API server on 127.0.0.1.

The server (http.server in a thread, on a free port) implements exactly the calls the launcher makes: create a
TFJob in a namespace, get it, delete it, list pods by label, read a pod's log. The real ``kubernetes`` client
talks to it over HTTP (``Configuration(host=http://127.0.0.1:PORT)``), so everything above the transport
(serialization, the generated API classes, error statuses) runs as it would against a cluster. The job moves
through a scripted list of states, one per status request; the worker pods, their logs and, when the job
succeeds, the workers' model folders on the "PVC" (a temporary folder) follow it. A launcher that gets SIGTERM
runs as its own process (the component's function, as KFP's executor calls it), talking to the same server.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from kfp import dsl
from kubernetes import client as k8s

from arcface.config import TrainConfig
from arcface.mlops import tfjob
from components.launch_tfjob import launch_tfjob

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "team-a"
CONFIG = TrainConfig(n_classes=3, backbone="TinyFaceNet", image_size=48, embedding_size=32, epochs=1,
                     batch_size=8, warmup_epochs=0.0, steps_per_epoch=2).to_dict()
JOB_LABEL = "training.kubeflow.org/job-name"
#: The chief's log: (visible from the n-th status request on, timestamp, line). Fractions of 1 to 9 digits, as
#: the kubelet writes them; one line that looks like JSON (the generated client would parse it as JSON).
CHIEF_LOG = [
    (1, "2026-01-01T00:00:01.5Z", "chief: save_path /pvc/arcface-tfjobs/x/model"),
    (1, "2026-01-01T00:00:01.523456789Z", "replicas 2, global batch 8"),  # after .5 (not as text)
    (2, "2026-01-01T00:00:02Z", "epoch 1/1: loss 4.12"),
    (2, "2026-01-01T00:00:02.25Z", '{"epoch": 1, "val_accuracy": 0.5}'),
    (3, "2026-01-01T00:00:03.000000001Z", "saved the models"),
]
WORKER1_LOG = [(1, "2026-01-01T00:00:01Z", "worker 1: starting"),
               (2, "2026-01-01T00:00:02Z", "ValueError: boom on worker 1")]


class FakeKubernetes:
    """One namespace's TFJobs and their worker pods; the job's state advances at each status request."""

    def __init__(self, states, *, on_state=None, failed_replica: int | None = None):
        self.states = list(states)  # "Created", "Running", "Succeeded", "Failed", or "deleted"
        self.on_state = on_state or {}  # state -> f(job), called when the job reaches it
        self.failed_replica = failed_replica
        self.jobs: dict[str, dict] = {}
        self.gets = 0
        self.state: str | None = None
        self.requests: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()

    # -- what the pods look like in the current state ---------------------------------------------------
    def pods(self, name: str) -> list[dict]:
        job = self.jobs.get(name)
        if job is None:
            return []
        workers = job["spec"]["tfReplicaSpecs"]["Worker"]
        pods = []
        for index in range(workers["replicas"]):
            phase = {"Created": "Pending", "Running": "Running", "Succeeded": "Succeeded",
                     "Failed": "Running"}.get(self.state, "Pending")
            status = {"phase": phase}
            if self.state == "Failed" and index == self.failed_replica:
                status = {"phase": "Failed", "containerStatuses": [{
                    "name": "tensorflow", "image": workers["template"]["spec"]["containers"][0]["image"],
                    "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "ValueError: boom"}}}]}
            pods.append({"metadata": {"name": f"{name}-worker-{index}", "namespace": NAMESPACE,
                                      "labels": {JOB_LABEL: name, "training.kubeflow.org/replica-type": "worker",
                                                 "training.kubeflow.org/replica-index": str(index)}},
                         "status": status})
        return pods

    def log(self, pod: str) -> list[str] | None:
        """The pod's log as far as it got (None: its container has not started)."""
        match = re.fullmatch(r"(.+)-worker-(\d+)", pod)
        if not match or match.group(1) not in self.jobs:
            return None
        if self.state in (None, "Created"):
            return None
        lines = CHIEF_LOG if match.group(2) == "0" else WORKER1_LOG
        return [f"{stamp} {text}" for shown, stamp, text in lines if shown <= self.gets]

    # -- the API ------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, object]:
        self.requests.append((method, path, query))
        tfjobs = f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/tfjobs"
        pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
        if method == "POST" and path == tfjobs:
            name = body["metadata"]["name"]
            if name in self.jobs:
                return 409, status(409, "AlreadyExists", f'tfjobs.kubeflow.org "{name}" already exists')
            self.jobs[name] = body
            return 201, body
        if path.startswith(tfjobs + "/"):
            name = path.rsplit("/", 1)[1]
            if name not in self.jobs:
                return 404, status(404, "NotFound", f'tfjobs.kubeflow.org "{name}" not found')
            if method == "DELETE":
                del self.jobs[name]
                return 200, status(200, "", "")
            state = self.states[min(self.gets, len(self.states) - 1)]
            self.gets += 1
            if state == "deleted":
                del self.jobs[name]
                return 404, status(404, "NotFound", f'tfjobs.kubeflow.org "{name}" not found')
            if state != self.state:
                self.state = state
                if state in self.on_state:
                    self.on_state[state](self.jobs[name])
            job = self.jobs[name]
            conditions = [condition("Created")]
            if state in ("Running", "Succeeded", "Failed"):
                conditions.append(condition("Running", status="False" if state != "Running" else "True"))
            if state == "Succeeded":
                conditions.append(condition("Succeeded", f"TFJob {NAMESPACE}/{name} successfully completed."))
            if state == "Failed":
                conditions.append(condition(
                    "Failed", f"TFJob {NAMESPACE}/{name} has failed because 1 Worker replica(s) failed.",
                    reason="TFJobFailed"))
            job["status"] = {"conditions": conditions, "replicaStatuses": {"Worker": {
                "failed": 1 if state == "Failed" else 0}}}
            return 200, job
        if method == "GET" and path == pods:
            selector = dict(part.split("=", 1) for part in query["labelSelector"].split(","))
            items = [pod for name in self.jobs for pod in self.pods(name)
                     if all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        match = re.fullmatch(re.escape(pods) + r"/([^/]+)/log", path)
        if method == "GET" and match:
            lines = self.log(match.group(1))
            if lines is None:
                return 400, status(400, "BadRequest", f'container "tensorflow" in pod "{match.group(1)}" is '
                                                      "waiting to start: ContainerCreating")
            assert query.get("container") == "tensorflow" and query.get("timestamps", "").lower() == "true"
            if "tailLines" in query:
                lines = lines[-int(query["tailLines"]):]
            # sinceSeconds is ignored: every read returns the whole log, the launcher prints each line once.
            return 200, "".join(line + "\n" for line in lines)
        return 404, status(404, "NotFound", f"no route {method} {path}")


def status(code: int, reason: str, message: str) -> dict:
    kind = {"details": {"kind": "tfjobs", "group": "kubeflow.org"}} if code == 404 else {}
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else "Success",
            "code": code, "reason": reason, "message": message, **kind}


def condition(kind: str, message: str = "", reason: str = "", status: str = "True") -> dict:
    return {"type": kind, "status": status, "reason": reason or f"TFJob{kind}", "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


@pytest.fixture
def api():
    """start(fake) -> an ApiClient talking to ``fake`` over HTTP on 127.0.0.1; stopped at the end."""
    servers, clients = [], []

    def start(fake: FakeKubernetes):
        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    code, answer = fake.handle(self.command, parsed.path, query, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        configuration = k8s.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        api_client = k8s.ApiClient(configuration)
        clients.append(api_client)
        return api_client

    yield start
    for api_client in clients:
        api_client.close()
    for server in servers:
        server.shutdown()
        server.server_close()


def aligned_folder(root: Path) -> Path:
    """An align-step artifact: manifest.json with relative roots (crops/ beside it) and one crop."""
    folder = root / "aligned"
    (folder / "crops" / "train" / "s1").mkdir(parents=True)
    (folder / "crops" / "train" / "s1" / "1.png").write_bytes(b"png")
    (folder / "manifest.json").write_text(json.dumps({
        "version": 1, "roots": {"train": "crops/train", "validation": "crops/validation"}, "class_names": ["s1"],
        "rows": [{"path": "s1/1.png", "identity": "s1", "split": "train", "width": 48, "height": 48,
                  "sha256": "0" * 64}]}))
    return folder


def request(pvc: Path, name: str = "arcface-run-1-abc", **kwargs) -> tfjob.TFJobRequest:
    values = {"name": name, "namespace": NAMESPACE, "image": "arcface-kfp/cpu:test", "workers": 2,
              "config": CONFIG, "pvc_name": "faces", "pvc_mount_path": str(pvc)}
    return tfjob.TFJobRequest(**{**values, **kwargs})


def workers_finish(pvc: Path, seen: dict):
    """What the workers leave on the PVC when they succeed (the chief's model folder and result file)."""
    def write(job: dict) -> None:
        run_dir = tfjob.run_folder(str(pvc), job["metadata"]["name"])
        seen["staged"] = (Path(run_dir) / "manifest" / "crops" / "train" / "s1" / "1.png").is_file()
        folder = Path(run_dir, tfjob.MODEL_FOLDER)
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps({"epochs_completed": 1, "worker": 0}))
        (folder / "embedding_model.keras").write_bytes(b"model of worker 0")
        (folder / "checkpoints" / "ckpt-1.index").write_bytes(b"ckpt")
        Path(run_dir, tfjob.RESULT_FILE).write_text(json.dumps({
            "epochs_completed": 1, "steps": 2, "stopped": "completed", "best_val_accuracy": 0.5,
            "history": [{"epoch": 1, "loss": 4.12, "accuracy": 0.25, "val_accuracy": 0.5}],
            "manifest_sha256": "f" * 64, "images_per_second": 12.5}))
    return write


# ---------------------------------------------------------------------------------------------------------
# The TFJob spec
# ---------------------------------------------------------------------------------------------------------
def test_the_spec_runs_the_train_steps_call_on_n_workers_with_the_pvc(tmp_path):
    config = {**CONFIG, "train_data": "/data/$(HOME)/faces"}  # a `$(...)` Kubernetes must not expand
    job = tfjob.build_tfjob(request(tmp_path, workers=3, gpus_per_worker=2, config=config,
                                     resources={"cpu_request": "4", "cpu_limit": "8", "memory_request": "8Gi",
                                                "memory_limit": "16Gi"},
                                     node_selector={"pool": "gpu"},
                                     tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                                   "effect": "NoSchedule"}],
                                     deadline_seconds=3600))
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert job["metadata"]["name"] == "arcface-run-1-abc" and job["metadata"]["namespace"] == NAMESPACE
    assert set(job["spec"]["tfReplicaSpecs"]) == {"Worker"}  # no Chief: worker 0 is TF's chief
    workers = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert workers["replicas"] == 3 and workers["restartPolicy"] == "ExitCode"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    pod = workers["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "tensorflow"  # the container the operator writes TF_CONFIG into
    assert container["image"] == "arcface-kfp/cpu:test"
    assert "TF_CONFIG" not in json.dumps(job), "the operator sets TF_CONFIG, not us"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "faces"}}]
    assert container["volumeMounts"] == [{"name": "data", "mountPath": str(tmp_path)}]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert workers["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}

    command = container["command"]
    assert command[:4] == ["python3", "-m", "arcface", "tfjob-worker"]
    args = dict(zip(command[4::2], command[5::2], strict=True))
    run_dir = str(tmp_path / "arcface-tfjobs" / "arcface-run-1-abc")
    assert args["--run-dir"] == run_dir and args["--manifest"] == run_dir + "/manifest"
    # The config is the train step's dict; Kubernetes turns $$ back into $.
    assert json.loads(args["--config"].replace("$$", "$")) == config
    assert "$$(HOME)" in args["--config"]


def test_the_spec_without_gpus_asks_for_none(tmp_path):
    job = tfjob.build_tfjob(request(tmp_path, workers=2))
    container = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    assert "resources" not in container or not container["resources"].get("limits")
    assert "nodeSelector" not in job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]


def test_a_tfjob_needs_a_pvc_and_a_worker(tmp_path):
    with pytest.raises(ValueError, match="needs a PVC"):
        request(tmp_path, pvc_name="")
    with pytest.raises(ValueError, match="at least 1"):
        request(tmp_path, workers=0)


def test_job_names_are_dns_labels_unique_to_the_run():
    name = tfjob.job_name("arcface-training-20260101-ABC_def/x" * 3)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 48
    assert tfjob.job_name("run-1") == tfjob.job_name("run-1") != tfjob.job_name("run-2")


# ---------------------------------------------------------------------------------------------------------
# Following a job over the API
# ---------------------------------------------------------------------------------------------------------
def test_component_runs_the_job_to_success_and_hands_on_the_chiefs_model(tmp_path, api, monkeypatch, capsys):
    pvc, seen = tmp_path / "pvc", {}
    fake = FakeKubernetes(["Created", "Running", "Running", "Succeeded"],
                          on_state={"Succeeded": workers_finish(pvc, seen)})
    api_client = api(fake)
    monkeypatch.setattr(tfjob, "in_cluster", lambda: (api_client, NAMESPACE))
    model = dsl.Model(name="model", uri=str(tmp_path / "artifacts" / "model"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "artifacts" / "metrics"))
    launch_tfjob.python_func(
        config=CONFIG, manifest=dsl.Dataset(name="aligned", uri=str(aligned_folder(tmp_path))), model=model,
        metrics=metrics, workers=2, image="arcface-kfp/cpu:test", pvc_name="faces", pvc_mount_path=str(pvc),
        gpus_per_worker=0, gpu_resource="nvidia.com/gpu", resources={}, node_selector={}, tolerations=[],
        timeout_minutes=1.0, poll_seconds=0.01, run_id="arcface-training-x7k2p")

    name = tfjob.job_name("arcface-training-x7k2p")
    created = fake.jobs[name]
    assert created["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    assert seen["staged"], "the manifest and its crops were on the PVC before the workers ran"
    # The chief's folder, not worker 1's, is the step's model artifact.
    assert (Path(model.path) / "embedding_model.keras").read_bytes() == b"model of worker 0"
    assert json.loads((Path(model.path) / "metadata.json").read_text())["worker"] == 0
    assert (Path(model.path) / "checkpoints" / "ckpt-1.index").is_file()
    assert not os.path.exists(tfjob.run_folder(str(pvc), name)), "the run's folder is removed after the copy"
    assert metrics.metadata == {"workers": 2, "epochs_completed": 1, "steps": 2, "images_per_second": 12.5,
                                "best_val_accuracy": 0.5, "final_loss": 4.12, "final_accuracy": 0.25,
                                "final_val_accuracy": 0.5}
    assert model.metadata["tfjob"] == f"{NAMESPACE}/{name}" and model.metadata["stopped"] == "completed"

    out = capsys.readouterr().out
    for state in ("Created", "Running", "Succeeded"):
        assert out.count(f"TFJob {NAMESPACE}/{name}: {state}") == 1, state
    for _, _, line in CHIEF_LOG:  # every chief line once, in order, although each read returned them all again
        assert out.count(f"[worker-0] {line}\n") == 1, line
    printed = [line for line in out.splitlines() if line.startswith("[worker-0] ")]
    assert printed == [f"[worker-0] {line}" for _, _, line in CHIEF_LOG]
    assert "worker 1: starting" not in out
    # Pods were found by the job's label; after the first read the log is asked for since the last one.
    pod_lists = [q for method, path, q in fake.requests if path.endswith("/pods")]
    assert pod_lists and all(q["labelSelector"] == f"{JOB_LABEL}={name}" for q in pod_lists)
    log_reads = [q for method, path, q in fake.requests if path.endswith("/log")]
    assert "sinceSeconds" not in log_reads[0] and all("sinceSeconds" in q for q in log_reads[1:])


def test_a_failed_job_names_the_job_the_replica_and_the_reason(tmp_path, api):
    pvc = tmp_path / "pvc"
    fake = FakeKubernetes(["Created", "Running", "Failed"], failed_replica=1)
    out = io.StringIO()
    with pytest.raises(tfjob.TFJobError) as failure:
        tfjob.launch(request(pvc), str(aligned_folder(tmp_path)), str(tmp_path / "model"), api_client=api(fake),
                      poll_seconds=0.01, timeout_seconds=60, out=out)
    message = str(failure.value)
    assert f"TFJob {NAMESPACE}/arcface-run-1-abc failed" in message
    assert "TFJobFailed" in message and "has failed because 1 Worker replica(s) failed" in message
    assert "worker-1 (pod arcface-run-1-abc-worker-1, exit code 1 (Error): ValueError: boom)" in message
    assert "[worker-1] ValueError: boom on worker 1" in out.getvalue()  # the failed replica's last lines
    assert not (tmp_path / "model").exists()
    assert os.path.isdir(tfjob.run_folder(str(pvc), "arcface-run-1-abc")), "kept: a retry resumes from it"
    # The failed job's pods that still run (the other workers) must not keep their GPUs: the job is deleted.
    assert deletes(fake) == ["arcface-run-1-abc"] and not fake.jobs
    assert "the step failed: deleted TFJob team-a/arcface-run-1-abc, which it created" in out.getvalue()


def deletes(fake: FakeKubernetes) -> list[str]:
    """The TFJobs the launcher asked to delete, in order."""
    prefix = f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/tfjobs/"
    return [path.removeprefix(prefix) for method, path, _ in fake.requests if method == "DELETE"]


def test_ctrl_c_while_following_deletes_the_job_it_created(tmp_path, api):
    fake = FakeKubernetes(["Created", "Running"])
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        tfjob.launch(request(tmp_path / "pvc"), str(aligned_folder(tmp_path)), str(tmp_path / "model"),
                      api_client=api(fake), poll_seconds=0.01, timeout_seconds=60, out=out, sleep=sleep)
    assert fake.state == "Running" and deletes(fake) == ["arcface-run-1-abc"] and not fake.jobs
    assert "the step was interrupted: deleted TFJob team-a/arcface-run-1-abc, which it created" in out.getvalue()


def test_a_job_deleted_from_outside_is_a_clear_failure(tmp_path, api):
    fake = FakeKubernetes(["Created", "Running", "deleted"])
    with pytest.raises(tfjob.TFJobError, match=f"TFJob {NAMESPACE}/arcface-run-1-abc was deleted while running"):
        tfjob.launch(request(tmp_path / "pvc"), str(aligned_folder(tmp_path)), str(tmp_path / "model"),
                      api_client=api(fake), poll_seconds=0.01, timeout_seconds=60, out=io.StringIO())


def test_a_job_past_the_timeout_is_deleted(tmp_path, api):
    fake = FakeKubernetes(["Running"])
    with pytest.raises(tfjob.TFJobError, match="did not finish within .* minutes .*Running.*deleted it"):
        tfjob.launch(request(tmp_path / "pvc"), str(aligned_folder(tmp_path)), str(tmp_path / "model"),
                      api_client=api(fake), poll_seconds=0.01, timeout_seconds=0.1, out=io.StringIO())
    assert ("DELETE", f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/tfjobs/arcface-run-1-abc", {}) in fake.requests
    assert not fake.jobs


def test_a_retried_launcher_follows_the_job_its_first_attempt_created(tmp_path, api):
    pvc, seen = tmp_path / "pvc", {}
    handler = signal.getsignal(signal.SIGTERM)
    fake = FakeKubernetes(["Running", "Succeeded"], on_state={"Succeeded": workers_finish(pvc, seen)})
    api_client = api(fake)
    job = request(pvc)
    fake.jobs[job.name] = tfjob.build_tfjob(job)
    out = io.StringIO()
    result = tfjob.launch(job, str(aligned_folder(tmp_path)), str(tmp_path / "model"), api_client=api_client,
                           poll_seconds=0.01, timeout_seconds=60, out=out)
    assert "exists already (a retried step): following it" in out.getvalue()
    assert result["stopped"] == "completed"
    assert (tmp_path / "model" / "embedding_model.keras").read_bytes() == b"model of worker 0"
    assert signal.getsignal(signal.SIGTERM) == handler, "the launcher's SIGTERM handler is undone"


def test_a_job_the_launcher_did_not_create_is_not_deleted_when_it_fails(tmp_path, api):
    """A job of the same name found already there (job names come from the run id) belongs to whoever created
    it: the launcher that adopted it reports the failure and leaves the job alone."""
    fake = FakeKubernetes(["Running", "Failed"], failed_replica=1)
    api_client = api(fake)
    job = request(tmp_path / "pvc")
    fake.jobs[job.name] = tfjob.build_tfjob(job)
    with pytest.raises(tfjob.TFJobError, match="failed"):
        tfjob.launch(job, str(aligned_folder(tmp_path)), str(tmp_path / "model"), api_client=api_client,
                      poll_seconds=0.01, timeout_seconds=60, out=io.StringIO())
    assert deletes(fake) == [] and job.name in fake.jobs


# A run stopped from the UI: Kubernetes sends the launcher's pod SIGTERM
LAUNCHER = textwrap.dedent("""
    import json, sys
    from kfp import dsl
    from kubernetes import client as k8s
    from arcface.mlops import tfjob
    from components.launch_tfjob import launch_tfjob

    host, namespace, manifest, artifacts, pvc, config = sys.argv[1:]
    api_client = k8s.ApiClient(k8s.Configuration(host=host))
    tfjob.in_cluster = lambda: (api_client, namespace)
    launch_tfjob.python_func(
        config=json.loads(config), manifest=dsl.Dataset(name="aligned", uri=manifest),
        model=dsl.Model(name="model", uri=artifacts + "/model"),
        metrics=dsl.Metrics(name="metrics", uri=artifacts + "/metrics"), workers=2, image="arcface-kfp/cpu:test",
        pvc_name="faces", pvc_mount_path=pvc, gpus_per_worker=1, gpu_resource="nvidia.com/gpu", resources={},
        node_selector={}, tolerations=[], timeout_minutes=10.0, poll_seconds=0.05, run_id="arcface-training-stop")
""")


@pytest.mark.parametrize("adopted", [False, True], ids=["created", "adopted"])
def test_a_terminated_launcher_deletes_the_job_it_created(tmp_path, api, adopted):
    """The launcher, a process of its own, gets SIGTERM while its job runs: it deletes the job it created (the
    pods would otherwise keep their GPUs until the job's deadline) and exits at once with an error saying so. A
    job it found already there (adopted) is left running."""
    fake = FakeKubernetes(["Created", "Running"])
    api_client = api(fake)
    name = tfjob.job_name("arcface-training-stop")
    if adopted:
        fake.jobs[name] = tfjob.build_tfjob(request(tmp_path / "pvc", name=name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, api_client.configuration.host, NAMESPACE, str(aligned_folder(tmp_path)),
         str(tmp_path / "artifacts"), str(tmp_path / "pvc"), json.dumps(CONFIG)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120  # the imports take seconds on a busy machine
        while fake.gets < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and fake.state == "Running", proc.communicate(timeout=5)[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        output = proc.communicate(timeout=30)[0]
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output[-3000:]
    assert took < 10, f"the launcher took {took:.1f} s to stop after SIGTERM"
    if adopted:
        assert deletes(fake) == [] and name in fake.jobs, output[-3000:]
        assert (f"TFJobError: the step was terminated (SIGTERM); TFJob {NAMESPACE}/{name} was there before it "
                "(not created by it): left running") in output
    else:
        assert deletes(fake) == [name] and not fake.jobs, output[-3000:]
        assert f"the step was terminated (SIGTERM): deleted TFJob {NAMESPACE}/{name}, which it created" in output
        # The step's error says it too, for the run's record (arcface.mlops.notify.failures_logged).
        assert (f"TFJobError: the step was terminated (SIGTERM) while TFJob {NAMESPACE}/{name} ran: deleted "
                f"TFJob {NAMESPACE}/{name}, which it created") in output, output[-3000:]


def test_bounds_and_data_the_workers_cannot_see(tmp_path, api):
    with pytest.raises(ValueError, match="poll_seconds must be between"):
        tfjob.follow(None, "x", NAMESPACE, poll_seconds=0)
    with pytest.raises(ValueError, match="poll_seconds must be between"):
        tfjob.follow(None, "x", NAMESPACE, poll_seconds=3600)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "manifest.json").write_text(json.dumps({
        "version": 1, "roots": {"train": str(tmp_path / "faces")}, "class_names": [], "rows": []}))
    with pytest.raises(ValueError, match="which the TFJob's workers cannot read"):
        tfjob.stage(request(tmp_path / "pvc"), str(outside))


# ---------------------------------------------------------------------------------------------------------
# The workers' command, for real: two processes with the TF_CONFIG the operator would give them
# ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_workers_command_trains_with_multi_worker_mirrored_strategy(tmp_path):
    """The spec's command, as Kubernetes would run it, in two local processes that find each other through
    TF_CONFIG: the chief writes a complete model folder and the shared checkpoints, the other worker nothing."""
    import shutil
    import subprocess
    import sys

    from arcface import artifacts
    from arcface.data import run_validation

    sample = Path(__file__).resolve().parents[2] / "sample" / "orl"
    pvc = tmp_path / "pvc"
    for split in ("train", "validation"):
        for identity in ("s1", "s2", "s3"):
            shutil.copytree(sample / split / identity, pvc / "faces" / split / identity)
    run_validation(str(pvc / "faces" / "train"), str(pvc / "faces" / "validation"), str(tmp_path / "manifest"),
                   n_classes=3)
    job = request(pvc, config={**CONFIG, "align": "none"})
    tfjob.stage(job, str(tmp_path / "manifest"))
    container = tfjob.build_tfjob(job)["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    command = [sys.executable if part == "python3" else part.replace("$$", "$") for part in container["command"]]
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]},
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)]), "CUDA_VISIBLE_DEVICES": ""}
    workers = [subprocess.Popen(command, env={**env, "TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for index in range(2)]
    logs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n\n".join(logs)
    metadata = json.loads((Path(job.model_folder) / "metadata.json").read_text())
    assert metadata["replicas"] == 2 and metadata["epochs_completed"] == 1, metadata
    assert metadata["checkpoint_dir"] == os.path.join(job.run_dir, tfjob.CHECKPOINT_KEY)
    assert list(Path(metadata["checkpoint_dir"]).glob("ckpt-*.index"))
    # Worker 1 wrote nothing of its own there: the run folder holds the staged manifest, the chief's model,
    # the checkpoints and the chief's result only.
    assert sorted(p.name for p in Path(job.run_dir).iterdir()) == sorted(
        [tfjob.MANIFEST_FOLDER, tfjob.MODEL_FOLDER, tfjob.CHECKPOINT_KEY, tfjob.RESULT_FILE])
    result = tfjob.copy_chief_model(job, str(tmp_path / "model"))
    assert result["stopped"] == "completed" and result["steps"] == 2
    trained = artifacts.load_model_dir(str(tmp_path / "model"))
    assert trained.class_names == ["s1", "s2", "s3"]
