"""Multi-worker training as a TFJob of the Kubeflow Training Operator, launched and followed from a pipeline step.

The pipeline's launcher step (``components/launch_tfjob``, with ``pipeline.py compile --workers N``) calls
:func:`launch`:

1. **stage**: the manifest folder (the align step's crops, or the validated manifest) is copied into a folder of
   this run on the shared PVC, ``<pvc mount>/arcface-tfjobs/<job name>/``: the workers cannot read the
   launcher's artifacts, and they write there too;
2. **create** the TFJob (:func:`build_tfjob`): N ``Worker`` replicas of our image, each running
   ``python3 -m arcface tfjob-worker`` (:func:`run_worker`: the train step's own call, ``train(config with
   save_path, manifest)``) with the PVC mounted at the same path. The operator sets ``TF_CONFIG`` in every
   replica (so :func:`arcface.train.pick_strategy` picks ``MultiWorkerMirroredStrategy``). Every worker is
   given the save_path ``<run>/model/`` and resumes from ``<run>/checkpoints/``; only the chief (worker 0)
   writes them, the others write to scratch folders of their own (arcface.train).
   A TFJob of this name that already exists (a retried launcher) is followed, not created again;
3. **follow** it (:func:`follow`) until its ``Succeeded`` or ``Failed`` condition, printing state changes and the
   chief's (worker-0's) log; a job deleted from outside, a failure (naming the failed replicas and the
   condition's reason) and the overall timeout (the job is then deleted) are errors;
4. **copy** the chief's model folder into the step's Model artifact, so evaluate and export read exactly what the
   single-pod train step writes, and remove the run's folder from the PVC.

A step that fails or is stopped once it has created the TFJob (the job failing, the timeout, any error, Ctrl-C,
or SIGTERM: Kubernetes stopping the pod of a terminated run) deletes that job on its way out: otherwise its pods
would keep their GPUs until the job's deadline. A job the step found already there (a retried step, or a run
whose ``run_id`` names another run's job) is left alone: another launcher may be following it. The run's folder
on the PVC stays, so that a retry resumes from its checkpoints.

The Kubernetes calls go through the ``kubernetes`` client (in-cluster config in the pipeline, any
``kubernetes.client.ApiClient`` in tests); the TFJob is built with the Training Operator's SDK models
(``kubeflow-training``). Nothing here imports TensorFlow, except the worker entry point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from arcface import atomic
from arcface.config import from_dict
from arcface.contracts import ManifestDir, ModelDir

#: The run folders' parent on the PVC: ``<pvc mount>/arcface-tfjobs/<job name>/``.
RUNS_FOLDER = "arcface-tfjobs"
MANIFEST_FOLDER = "manifest"
#: The checkpoints' folder inside the run folder, shared by the workers (only the chief writes it).
CHECKPOINT_KEY = "checkpoints"
#: The workers' save_path inside the run folder (only the chief writes it; it is copied into the artifact).
MODEL_FOLDER = "model"
#: What the chief writes beside it: the TrainResult fields the train step logs as metrics.
RESULT_FILE = "result.json"
#: The chief's replica, as the operator labels it (worker 0 when the TFJob has no Chief replica).
CHIEF_REPLICA = "worker-0"
#: Poll intervals outside these bounds are refused: a busy loop on the API server, or a launcher that notices
#: the end of a job minutes late.
MIN_POLL_SECONDS, MAX_POLL_SECONDS = 0.01, 300.0
#: Consecutive transient API errors (5xx, 429, connection failures) tolerated while following.
MAX_TRANSIENT_ERRORS = 10
#: Seconds added to the log window of each poll (the kubelet's clock and the request's latency).
LOG_OVERLAP_SECONDS = 5
#: Every Kubernetes request: (connect, read) timeouts in seconds.
REQUEST_TIMEOUT = (10, 60)
#: How long a finished TFJob stays for inspection (then the operator deletes it and its pods).
TTL_SECONDS_AFTER_FINISHED = 7 * 86400
#: A worker killed by a signal (exit code 128+, e.g. a preempted node) is restarted by the operator
#: (restartPolicy ExitCode; it resumes from its checkpoint); exit codes 1-127 fail the job. At most this many
#: restarts in all.
BACKOFF_LIMIT = 3
SUCCEEDED, FAILED = "Succeeded", "Failed"
#: Last lines of each failed (non-chief) replica's log printed when the job fails.
FAILED_LOG_LINES = 50
#: Worker exit codes of :func:`run_worker` that count as success (arcface.cli's ``train``).
OK_STOPS = ("completed", "budget", "nothing-to-do")


class TFJobError(RuntimeError):
    """The TFJob failed, was deleted from outside, or did not finish in time; the message says which and why."""


class Terminated(BaseException):
    """The launcher got SIGTERM while its TFJob ran. A BaseException, as KeyboardInterrupt: the ``except Exception``
    that retries transient API errors while following must not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signal_name = signal.Signals(signum).name


def _constants():
    from kubeflow.training.constants import constants

    return constants


# ---------------------------------------------------------------------------------------------------------
# Names and folders
# ---------------------------------------------------------------------------------------------------------
def job_name(run_id: str) -> str:
    """A DNS-1035 name unique to the pipeline run (so a retried launcher finds its job): ``arcface-<run>-<hash>``,
    short enough for the operator's pod and service names (``<name>-worker-<i>``)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    slug = slug.removeprefix("arcface-")[:30].strip("-")
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"arcface-{slug}-{digest}" if slug else f"arcface-{digest}"


def run_folder(pvc_mount_path: str, name: str) -> str:
    return os.path.join(pvc_mount_path, RUNS_FOLDER, name)


def _k8s_literal(text: str) -> str:
    """A string as Kubernetes passes it on in a container's command: ``$(NAME)`` would be expanded, ``$$`` is ``$``."""
    return text.replace("$", "$$")


# ---------------------------------------------------------------------------------------------------------
# The TFJob
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TFJobRequest:
    """What the TFJob runs and where. ``resources``: cpu_request, cpu_limit, memory_request, memory_limit."""

    name: str
    namespace: str
    image: str
    workers: int
    config: Mapping[str, Any]
    pvc_name: str
    pvc_mount_path: str
    gpus_per_worker: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    resources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Kubernetes tolerations as dicts: key, operator, value, effect.
    tolerations: Sequence[Mapping[str, Any]] = ()
    #: activeDeadlineSeconds: the operator stops the job after this even if the launcher is gone.
    deadline_seconds: int | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be 0 or more, got {self.gpus_per_worker}")
        if not self.pvc_name:
            raise ValueError("a TFJob needs a PVC: the workers share the run folder on it")

    @property
    def run_dir(self) -> str:
        return run_folder(self.pvc_mount_path, self.name)

    @property
    def manifest_dir(self) -> str:
        return os.path.join(self.run_dir, MANIFEST_FOLDER)

    @property
    def model_folder(self) -> str:
        return os.path.join(self.run_dir, MODEL_FOLDER)

    def command(self) -> list[str]:
        """The workers' command: the train step's own call (see :func:`run_worker`)."""
        config = json.dumps(dict(self.config), sort_keys=True, separators=(",", ":"))
        return ["python3", "-m", "arcface", "tfjob-worker", "--config", _k8s_literal(config),
                "--manifest", _k8s_literal(self.manifest_dir), "--run-dir", _k8s_literal(self.run_dir)]


def build_tfjob(request: TFJobRequest) -> dict[str, Any]:
    """The kubeflow.org/v1 TFJob as the API takes it (a dict).

    TF_CONFIG is not set here: the operator writes it into every replica (the cluster's workers and the replica's
    own index). The container is named ``tensorflow``, the name the operator looks for.
    """
    from kubeflow.training import (
        KubeflowOrgV1ReplicaSpec,
        KubeflowOrgV1RunPolicy,
        KubeflowOrgV1TFJob,
        KubeflowOrgV1TFJobSpec,
    )
    from kubernetes import client as k8s

    c = _constants()
    requests = {k: v for k, v in (("cpu", request.resources.get("cpu_request")),
                                  ("memory", request.resources.get("memory_request"))) if v}
    limits = {k: v for k, v in (("cpu", request.resources.get("cpu_limit")),
                                ("memory", request.resources.get("memory_limit"))) if v}
    if request.gpus_per_worker:
        limits[request.gpu_resource] = str(request.gpus_per_worker)
    container = k8s.V1Container(
        name=c.TFJOB_CONTAINER, image=request.image, command=request.command(),
        # Log lines reach the launcher as they are printed; TF's C++ logging as arcface's CLI sets it.
        env=[k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"), k8s.V1EnvVar(name="TF_CPP_MIN_LOG_LEVEL", value="2")],
        resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
        volume_mounts=[k8s.V1VolumeMount(name="data", mount_path=request.pvc_mount_path)])
    tolerations = [k8s.V1Toleration(key=t.get("key"), operator=t.get("operator") or None, value=t.get("value"),
                                    effect=t.get("effect")) for t in request.tolerations]
    template = k8s.V1PodTemplateSpec(
        # No Istio sidecar: it would keep a finished worker's pod running, and the workers talk gRPC directly.
        metadata=k8s.V1ObjectMeta(annotations={c.ISTIO_SIDECAR_INJECTION: "false"}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=[k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=request.pvc_name))],
            node_selector=dict(request.node_selector) or None, tolerations=tolerations or None))
    job = KubeflowOrgV1TFJob(
        api_version=c.API_VERSION, kind=c.TFJOB_KIND,
        metadata=k8s.V1ObjectMeta(name=request.name, namespace=request.namespace,
                                  labels={"app.kubernetes.io/name": "arcface",
                                          "app.kubernetes.io/component": "training"}),
        spec=KubeflowOrgV1TFJobSpec(
            run_policy=KubeflowOrgV1RunPolicy(
                clean_pod_policy="Running", backoff_limit=BACKOFF_LIMIT,
                ttl_seconds_after_finished=TTL_SECONDS_AFTER_FINISHED,
                active_deadline_seconds=request.deadline_seconds),
            tf_replica_specs={c.REPLICA_TYPE_WORKER: KubeflowOrgV1ReplicaSpec(
                replicas=request.workers, restart_policy="ExitCode", template=template)}))
    return k8s.ApiClient().sanitize_for_serialization(job)


# ---------------------------------------------------------------------------------------------------------
# The Kubernetes API
# ---------------------------------------------------------------------------------------------------------
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def in_cluster() -> tuple[Any, str]:
    """(an ApiClient from the pod's service account, the pod's namespace)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    with open(IN_CLUSTER_NAMESPACE_FILE, encoding="utf-8") as f:
        namespace = f.read().strip()
    return client.ApiClient(configuration), namespace


def _is_transient(error: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ApiException):
        return error.status in (429, 500, 502, 503, 504) or error.status == 0
    return isinstance(error, HTTPError | ConnectionError | TimeoutError)


def create_or_adopt(api_client, body: Mapping[str, Any], out: TextIO | None = None) -> bool:
    """Create the TFJob; True when created, False when a job of its name existed (a retried launcher follows
    the job its first attempt started)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    out = sys.stdout if out is None else out
    c = _constants()
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    try:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.TFJOB_PLURAL, dict(body), _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        if e.status == 409:
            _say(out, f"TFJob {namespace}/{name} exists already (a retried step): following it")
            return False
        if e.status == 404:
            raise TFJobError(f"cannot create TFJob {namespace}/{name}: the API has no kubeflow.org/v1 tfjobs; "
                             "install the Kubeflow Training Operator") from None
        if e.status == 403:
            raise TFJobError(f"cannot create TFJob {namespace}/{name}: forbidden ({_api_message(e)}); the "
                             "pipeline's service account needs create/get/delete on tfjobs and get/list on pods "
                             "and pods/log") from None
        raise TFJobError(f"cannot create TFJob {namespace}/{name}: HTTP {e.status} {_api_message(e)}") from None
    _say(out, f"created TFJob {namespace}/{name}: {_replica_summary(body)}")
    return True


def delete_job(api_client, name: str, namespace: str, request_timeout=REQUEST_TIMEOUT) -> bool:
    """Delete the TFJob and, in the background, its pods; False when it was gone already."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    c = _constants()
    try:
        client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.TFJOB_PLURAL, name,
            body=client.V1DeleteOptions(propagation_policy="Background"), _request_timeout=request_timeout)
    except ApiException as e:
        if e.status != 404:
            raise
        return False
    return True


def _api_message(error) -> str:
    try:
        return json.loads(error.body).get("message") or error.reason
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


def _replica_summary(body: Mapping[str, Any]) -> str:
    specs = body.get("spec", {}).get("tfReplicaSpecs", {})
    parts = []
    for kind, spec in specs.items():
        container = spec["template"]["spec"]["containers"][0]
        limits = (container.get("resources") or {}).get("limits") or {}
        gpus = [f"{v} {k}" for k, v in limits.items() if k not in ("cpu", "memory")]
        parts.append(f"{spec.get('replicas', 1)} {kind} replica(s) of {container['image']}"
                     + (f", {', '.join(gpus)} each" if gpus else ""))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Following the job
# ---------------------------------------------------------------------------------------------------------
def job_state(job: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """(state, its condition): Succeeded or Failed when such a condition is true, else the last true condition's
    type (Created, Running, Restarting), else Pending (the operator has not seen the job yet)."""
    conditions = [cond for cond in (job.get("status") or {}).get("conditions") or [] if cond.get("status") == "True"]
    for final in (FAILED, SUCCEEDED):
        for cond in conditions:
            if cond.get("type") == final:
                return final, cond
    if conditions:
        return conditions[-1].get("type", "Unknown"), conditions[-1]
    return "Pending", None


def replica_name(pod: Any) -> str:
    """``worker-1`` from the operator's labels, else the pod's name."""
    c = _constants()
    labels = pod.metadata.labels or {}
    kind, index = labels.get(c.REPLICA_TYPE_LABEL), labels.get(c.REPLICA_INDEX_LABEL)
    return f"{kind.lower()}-{index}" if kind and index is not None else pod.metadata.name


def _is_chief(pod: Any) -> bool:
    return replica_name(pod) == CHIEF_REPLICA


def _termination(pod: Any) -> str | None:
    """How the pod's container ended when it failed: ``exit code 1 (Error): message``; None when it did not."""
    statuses = (pod.status.container_statuses or []) if pod.status else []
    for status in statuses:
        for state in (status.state, status.last_state):
            ended = state.terminated if state else None
            if ended and ended.exit_code:
                text = f"exit code {ended.exit_code}" + (f" ({ended.reason})" if ended.reason else "")
                return text + (f": {ended.message.strip()}" if ended.message else "")
    if pod.status and pod.status.phase == "Failed":
        return f"pod failed ({pod.status.reason or 'no reason given'})" + (
            f": {pod.status.message}" if pod.status.message else "")
    return None


def _log_time(stamp: str) -> tuple[str, int] | None:
    """An RFC 3339 timestamp of ``kubectl logs --timestamps`` as a sortable key (the fraction has 0-9 digits)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", stamp)
    if not match:
        return None
    return match.group(1), int((match.group(2) or "").ljust(9, "0"))


class PodLog:
    """A pod's log printed into the launcher's, line by line, once each.

    Each :meth:`read` asks for the lines since the previous read (``sinceSeconds``, with some overlap) with their
    timestamps, and prints only those after the last printed one; so a long log is not read again at every poll,
    a restarted container's lines follow its predecessor's, and nothing is printed twice.
    """

    def __init__(self, api_client, namespace: str, out: TextIO, prefix: str, clock: Callable[[], float]):
        self.api_client, self.namespace, self.out, self.prefix, self.clock = api_client, namespace, out, prefix, clock
        self.last: tuple[str, int] | None = None
        self.at_last: set[str] = set()
        self.read_at: float | None = None

    def read(self, pod_name: str, tail_lines: int | None = None) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        since = None if self.read_at is None else int(self.clock() - self.read_at) + LOG_OVERLAP_SECONDS
        started = self.clock()
        try:
            # _preload_content=False: the generated client would parse a log that looks like JSON as JSON.
            answer = client.CoreV1Api(self.api_client).read_namespaced_pod_log(
                pod_name, self.namespace, container=_constants().TFJOB_CONTAINER, timestamps=True,
                since_seconds=since, tail_lines=tail_lines, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status in (400, 404):  # the container is not started yet, or the pod is gone
                return
            raise
        self.read_at = started
        for raw in answer.data.decode("utf-8", "replace").splitlines():
            stamp, _, line = raw.partition(" ")
            key = _log_time(stamp)
            if key is None:  # not a timestamped line: print it as it is
                self.out.write(f"{self.prefix}{raw}\n")
                continue
            if self.last is not None and (key < self.last or (key == self.last and line in self.at_last)):
                continue
            if key != self.last:
                self.last, self.at_last = key, set()
            self.at_last.add(line)
            self.out.write(f"{self.prefix}{line}\n")
        self.out.flush()


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _list_pods(api_client, name: str, namespace: str) -> list:
    from kubernetes import client

    c = _constants()
    return client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"{c.JOB_NAME_LABEL}={name}", _request_timeout=REQUEST_TIMEOUT).items


def failure_message(job: Mapping[str, Any], condition: Mapping[str, Any] | None, pods: Sequence[Any]) -> str:
    """``TFJob ns/name failed: <reason>: <message>; failed replica(s): worker-1 (pod ..., exit code 1 (Error))``."""
    meta = job.get("metadata", {})
    text = f"TFJob {meta.get('namespace')}/{meta.get('name')} failed"
    if condition:
        text += f": {condition.get('reason') or 'no reason given'}"
        if condition.get("message"):
            text += f": {condition['message'].rstrip('.')}"
    failed = [(replica_name(pod), pod.metadata.name, how) for pod in pods if (how := _termination(pod))]
    if failed:
        text += "; failed replica(s): " + ", ".join(f"{replica} (pod {pod}, {how})" for replica, pod, how in failed)
    else:
        counts = {kind: status.get("failed") for kind, status in
                  ((job.get("status") or {}).get("replicaStatuses") or {}).items() if status.get("failed")}
        if counts:
            text += "; failed replica(s): " + ", ".join(f"{n} {kind}" for kind, n in counts.items())
    return text


def follow(api_client, name: str, namespace: str, *, poll_seconds: float = 10.0, timeout_seconds: float = 86400.0,
           out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the TFJob until it succeeds (return it), fails, is deleted, or runs past ``timeout_seconds`` (then it
    is deleted); print its state changes and the chief's log. Transient API errors (5xx, 429, connection
    failures) are retried, :data:`MAX_TRANSIENT_ERRORS` in a row at most."""
    from kubernetes import client

    if not MIN_POLL_SECONDS <= poll_seconds <= MAX_POLL_SECONDS:
        raise ValueError(f"poll_seconds must be between {MIN_POLL_SECONDS} and {MAX_POLL_SECONDS}, got {poll_seconds}")
    if timeout_seconds <= 0:
        raise ValueError(f"timeout must be positive, got {timeout_seconds} s")
    out = sys.stdout if out is None else out
    watch = _JobWatch(client.CustomObjectsApi(api_client), api_client, name, namespace, out, clock)
    deadline = clock() + timeout_seconds
    while True:
        job = watch.poll()
        if job is not None:
            return job
        if clock() >= deadline:
            delete_job(api_client, name, namespace)
            raise TFJobError(f"TFJob {namespace}/{name} did not finish within {timeout_seconds / 60:g} minutes "
                             f"(last state: {watch.state or 'not seen'}); deleted it")
        sleep(poll_seconds)


class _JobWatch:
    """What :func:`follow` knows of a TFJob between two polls: its state, and the API errors in a row."""

    def __init__(self, custom, api_client, name: str, namespace: str, out: TextIO, clock: Callable[[], float]):
        self.custom, self.api_client, self.name, self.namespace, self.out = custom, api_client, name, namespace, out
        self.clock = clock
        self.constants = _constants()
        self.chief_log = PodLog(api_client, namespace, out, f"[{CHIEF_REPLICA}] ", clock)
        self.state, self.condition, self.errors = None, None, 0

    def poll(self) -> dict[str, Any] | None:
        """The job once it succeeded, None while it runs; raises TFJobError when it failed or was deleted."""
        c, name, namespace = self.constants, self.name, self.namespace
        try:
            job = self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.TFJOB_PLURAL, name,
                                                           _request_timeout=REQUEST_TIMEOUT)
        except Exception as e:
            if getattr(e, "status", None) == 404:
                raise TFJobError(f"TFJob {namespace}/{name} was deleted while running (last state: "
                                 f"{self.state or 'not seen yet'})") from None
            self.transient(e)
            return None
        new_state, self.condition = job_state(job)
        if new_state != self.state:
            self.state = new_state
            detail = f" ({self.condition['message']})" if self.condition and self.condition.get("message") else ""
            _say(self.out, f"TFJob {namespace}/{name}: {self.state}{detail}")
        pods = self.pods_and_chief_log()
        if self.state == SUCCEEDED:
            return job
        if self.state == FAILED:
            self.print_failed_logs(pods)
            raise TFJobError(failure_message(job, self.condition, pods))
        return None

    def pods_and_chief_log(self) -> list:
        """The job's pods, after printing the chief's new log lines; [] when they cannot be read."""
        try:
            pods = _list_pods(self.api_client, self.name, self.namespace)
            chief = [pod for pod in pods if _is_chief(pod)]
            if chief and chief[0].status and chief[0].status.phase in ("Running", "Succeeded", "Failed"):
                self.chief_log.read(chief[0].metadata.name)  # after the state: a finished job's last lines too
        except Exception as e:
            if self.state not in (SUCCEEDED, FAILED):
                self.transient(e)
            else:  # the job's outcome is known: the pods or the log are only a bonus now
                _say(self.out, f"(could not read the pods or the chief's log of TFJob {self.namespace}/{self.name}: "
                               f"{e})")
            return []
        self.errors = 0
        return pods

    def print_failed_logs(self, pods: list) -> None:
        for pod in pods:  # the failed replicas' last lines (the chief's are printed already)
            if _termination(pod) and not _is_chief(pod):
                with contextlib.suppress(Exception):
                    PodLog(self.api_client, self.namespace, self.out, f"[{replica_name(pod)}] ", self.clock).read(
                        pod.metadata.name, tail_lines=FAILED_LOG_LINES)

    def transient(self, error: BaseException) -> None:
        """Count a retryable API error; raise on any other, or on one too many in a row."""
        if not _is_transient(error) or self.errors >= MAX_TRANSIENT_ERRORS:
            status = getattr(error, "status", None)
            what = f"HTTP {status} {_api_message(error)}" if status else f"{type(error).__name__}: {error}"
            raise TFJobError(f"following TFJob {self.namespace}/{self.name}: {what}") from error
        self.errors += 1
        _say(self.out, f"(API error while following TFJob {self.namespace}/{self.name}: "
                       f"{getattr(error, 'status', '') or error}; retrying)")


# ---------------------------------------------------------------------------------------------------------
# Staging, copying, the whole launch
# ---------------------------------------------------------------------------------------------------------
def stage(request: TFJobRequest, manifest_dir: str) -> None:
    """Copy the manifest folder into the run folder on the PVC; refuse data the workers cannot see."""
    os.makedirs(request.run_dir, exist_ok=True)
    shutil.copytree(manifest_dir, request.manifest_dir, dirs_exist_ok=True)
    manifest = ManifestDir.read(request.manifest_dir)
    mount = os.path.abspath(request.pvc_mount_path)
    outside = sorted({root for root in manifest.roots.values()
                      if os.path.commonpath([mount, os.path.abspath(root)]) != mount})
    if outside:
        raise ValueError(f"the manifest's images are under {', '.join(outside)}, which the TFJob's workers cannot "
                         f"read: only the PVC {request.pvc_name} is mounted in them (at {mount}); put the data on "
                         "it (data_root under the mount)")


def copy_chief_model(request: TFJobRequest, model_dir: str) -> dict[str, Any]:
    """The chief's model folder into ``model_dir``; return its TrainResult fields (the worker's result file)."""
    chief = request.model_folder
    if not os.path.isfile(os.path.join(chief, ModelDir.METADATA_FILE)):
        raise TFJobError(f"TFJob {request.namespace}/{request.name} succeeded but its chief wrote no model under "
                         f"{chief} (no {ModelDir.METADATA_FILE})")
    shutil.copytree(chief, model_dir, dirs_exist_ok=True)
    result_file = os.path.join(request.run_dir, RESULT_FILE)
    if os.path.isfile(result_file):
        with open(result_file, encoding="utf-8") as f:
            return json.load(f)
    metadata = ModelDir.read_metadata(chief)
    return {key: metadata.get(key) for key in ("epochs_completed", "steps", "stopped", "best_val_accuracy",
                                               "history", "manifest_sha256")}


#: The cleanup's delete request: (connect, read) seconds. Kubernetes kills a pod 30 s after its SIGTERM by default.
CLEANUP_TIMEOUT = (5, 15)


class _TerminationGuard:
    """SIGTERM as :class:`Terminated`, raised only where the launcher can clean up after it.

    Python's default for SIGTERM ends the process on the spot, before any ``finally``. While the create request is
    in flight the signal is held back and raised once it returns (interrupted, the job might exist without the
    launcher knowing it created it); during the cleanup another one is ignored (it would interrupt the deletion).
    Only the main thread may set signal handlers; launch() called from another thread keeps the process's own
    handler (the signal goes to the main thread anyway).
    """

    def __init__(self):
        self.signum: int | None = None
        self.armed = False
        self.previous = None
        self.installed = False

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        if self.armed:
            self.armed = False
            raise Terminated(signum)

    def __enter__(self) -> _TerminationGuard:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        return self

    def arm(self) -> None:
        if self.signum is not None:
            raise Terminated(self.signum)
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def __exit__(self, *exc) -> None:
        if self.installed:  # None: a handler not set from Python, i.e. the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)


def _delete_created_job(api_client, request: TFJobRequest, error: BaseException, out: TextIO) -> str:
    """Delete the TFJob this step created, after ``error``; return what happened, for the step's error."""
    where = f"TFJob {request.namespace}/{request.name}"
    why = {Terminated: f"the step was terminated ({getattr(error, 'signal_name', '')})",
           KeyboardInterrupt: "the step was interrupted"}.get(type(error), "the step failed")
    try:
        deleted = delete_job(api_client, request.name, request.namespace, request_timeout=CLEANUP_TIMEOUT)
    except Exception as e:
        status = getattr(e, "status", None)
        what = f"HTTP {status} {_api_message(e)}" if status else f"{type(e).__name__}: {e}"
        done = (f"could not delete {where}, which it created ({what}); delete it by hand (kubectl delete tfjob "
                f"-n {request.namespace} {request.name}), or its pods run on until the operator's deadline"
                + (f" ({request.deadline_seconds} s after it started)" if request.deadline_seconds else ""))
    else:
        # Gone already: deleted by follow()'s timeout, or from outside.
        done = (f"deleted {where}, which it created, so that its pods stop and free their resources" if deleted
                else f"{where}, which it created, is gone already")
    _say(out, f"{why}: {done}")
    return done


def launch(request: TFJobRequest, manifest_dir: str, model_dir: str, *, api_client=None,
           poll_seconds: float = 10.0, timeout_seconds: float = 86400.0, out: TextIO | None = None,
           keep_run_folder: bool = False, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Stage, create (or adopt), follow, copy; return the chief's TrainResult fields. ``api_client`` None: the
    pod's in-cluster service account."""
    out = sys.stdout if out is None else out
    if api_client is None:
        api_client, _ = in_cluster()
    stage(request, manifest_dir)
    with _TerminationGuard() as termination:
        created = False
        try:
            created = create_or_adopt(api_client, build_tfjob(request), out)
            termination.arm()
            follow(api_client, request.name, request.namespace, poll_seconds=poll_seconds,
                   timeout_seconds=timeout_seconds, out=out, clock=clock, sleep=sleep)
            result = copy_chief_model(request, model_dir)
        except BaseException as error:
            termination.disarm()
            if not created:  # none, or another launcher's (adopted): not this step's to delete
                if isinstance(error, Terminated):
                    raise TFJobError(f"the step was terminated ({error.signal_name}); TFJob {request.namespace}/"
                                     f"{request.name} was there before it (not created by it): left running") from None
                raise
            done = _delete_created_job(api_client, request, error, out)
            if isinstance(error, Terminated):
                raise TFJobError(f"the step was terminated ({error.signal_name}) while TFJob {request.namespace}/"
                                 f"{request.name} ran: {done}") from None
            raise
    _say(out, f"copied the chief's model ({request.model_folder}) into {model_dir}")
    if not keep_run_folder:
        shutil.rmtree(request.run_dir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------------------
# The workers' command: python3 -m arcface tfjob-worker --config JSON --manifest DIR --run-dir DIR
# ---------------------------------------------------------------------------------------------------------
def run_worker(config_json: str, manifest_dir: str, run_dir: str) -> int:
    """Train as one worker of the TFJob: the train step's call, with save_path <run_dir>/model (the chief's)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from arcface.train import tf_config_is_chief, train

    save_path = os.path.join(run_dir, MODEL_FOLDER)
    chief = tf_config_is_chief()
    print(f"{'chief' if chief else 'worker'}: save_path {save_path}", flush=True)
    config = {**json.loads(config_json), "save_path": save_path}
    if not config.get("checkpoint_dir"):  # every worker resumes from the checkpoints the chief writes
        config.update(checkpoint_dir=run_dir, checkpoint_key=CHECKPOINT_KEY)
    result = train(from_dict(config), ManifestDir.read(manifest_dir))
    if chief:
        atomic.write_json(os.path.join(run_dir, RESULT_FILE), {
            "epochs_completed": result.epochs_completed, "steps": result.steps, "stopped": result.stopped,
            "best_val_accuracy": result.best_val_accuracy, "history": result.history,
            "manifest_sha256": result.manifest_sha256, "images_per_second": result.images_per_second})
    return 0 if result.stopped in OK_STOPS else 1

