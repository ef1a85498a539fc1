"""The ArcFace Kubeflow pipeline (validate -> train -> evaluate -> quality gate -> export) and its commands.

    python pipeline.py compile [--output arcface_pipeline.yaml] [--gpu nvidia.com/gpu --gpu-count 1]
                               [--node-selector K=V] [--toleration KEY[=VALUE]:EFFECT] [--pvc NAME --pvc-mount /data]
    python pipeline.py run --local [--config YAML] [--data sample/orl] [--param k=v ...] [--output runs/local]
    python pipeline.py run --docker [same options]     # every step in its image (kfp.local.DockerRunner)
    python pipeline.py submit --host URL [--experiment NAME] [--namespace NS] [--token T] [--param k=v ...]
    python pipeline.py schedule --host URL (--cron '0 0 3 * * 0' | --every 7d) [--max_minutes 60] [--param k=v ...]

Parameters: every field of :class:`arcface.config.TrainConfig` is a pipeline parameter with the same name, type
and default (the signature is generated from ``arcface.config.fields()``, so a new flag is a new parameter),
plus the few that only the pipeline has (:data:`PIPELINE_PARAMETERS`: data_root, pairs, the quality gate,
export). ``run --local`` starts from :data:`LOCAL_PRESET` (a small model that finishes in minutes on a laptop
CPU); the compiled pipeline keeps the original flags' defaults.

Nothing here imports TensorFlow: the component bodies import the library inside their containers.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kfp import compiler, dsl

from arcface import config as cfg
from components.common import GPU_IMAGE
from components.evaluate import evaluate_model, quality_gate
from components.export import export_model
from components.train import train_model
from components.validate import validate_data

PIPELINE_NAME = "arcface-training"
PIPELINE_DESCRIPTION = ("ArcFace face recognition: validate the face folders, train, evaluate verification "
                        "accuracy, and export the model when it passes the quality gate.")

#: Parameters of the pipeline that are not training flags: name -> (type, default, help).
PIPELINE_PARAMETERS: dict[str, tuple[type, Any, str]] = {
    "data_root": (str, "", "folder holding train/ and validation/ (e.g. on a mounted PVC); when set it "
                           "replaces train_data and validation_data"),
    "pairs_file": (str, "", "LFW-format pairs file for verification; empty: pairs drawn from the validation "
                            "identities"),
    "pairs_root": (str, "", "image folder of pairs_file; empty: the pairs file's folder"),
    "accuracy_threshold": (float, 0.9, "quality gate: export only when the verification accuracy is at least "
                                       "this"),
    "current_model_metrics": (str, "", "the production model's metrics.json (path or JSON text) or accuracy; "
                                       "export only when the new model is better. Empty: no production model"),
    "export_formats": (str, "saved_model,keras,tflite,onnx", "comma-separated export formats"),
    "quantize": (str, "none", "none, float16 or dynamic (adds a quantized TFLite file)"),
}

#: ``run --local`` defaults: a small model that runs the whole DAG on the bundled sample in a few minutes on a
#: 2-core CPU. Overridden by --config, --data and --param; ``--no-preset`` runs the pipeline's own defaults.
LOCAL_PRESET: dict[str, Any] = {
    "backbone": "MobileFaceNet", "image_size": 64, "embedding_size": 128, "epochs": 12, "batch_size": 16,
    "lr": 0.05, "warmup_epochs": 1.0, "enhance": 32.0, "accuracy_threshold": 0.5,
}
DEFAULT_LOCAL_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample", "orl")

# Step settings. Caching is off everywhere: validate and the gate read things their cache key cannot see (the
# images under data_root, the file named by current_model_metrics), training must never be skipped, and
# evaluate/export consume the fresh model of this run, so a cache hit is impossible for them anyway.
CACHING = {"validate": False, "train": False, "evaluate": False, "gate": False, "export": False}
# (cpu request, cpu limit, memory request, memory limit)
RESOURCES = {
    "validate": ("1", "4", "1Gi", "4Gi"),
    "train": ("4", "8", "8Gi", "16Gi"),
    "evaluate": ("2", "4", "4Gi", "8Gi"),
    "gate": ("100m", "500m", "128Mi", "256Mi"),
    "export": ("2", "4", "4Gi", "8Gi"),
}
# Transient failures only (node preemption, a volume or object store that hiccups): (retries, first backoff).
# Training retries once: with resume on, a retried pod continues from the last checkpoint when the artifact
# store is a persistent mount, and a genuine bug fails again quickly anyway.
RETRIES = {"validate": (2, "30s"), "train": (1, "120s"), "evaluate": (2, "30s"), "gate": (2, "10s"),
           "export": (2, "30s")}
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = "3600s"


# ---------------------------------------------------------------------------------------------------------
# Compile-time options (GPU, node placement, data volume)
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Toleration:
    key: str
    effect: str = "NoSchedule"
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """``KEY[=VALUE][:EFFECT]``, e.g. ``nvidia.com/gpu:NoSchedule`` or ``pool=gpu:NoExecute``."""
        body, _, effect = text.partition(":")
        key, _, value = body.partition("=")
        if not key:
            raise ValueError(f"--toleration {text!r}: expected KEY[=VALUE][:EFFECT]")
        effect = effect or "NoSchedule"
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"--toleration {text!r}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
        return cls(key=key, effect=effect, value=value or None)


@dataclasses.dataclass(frozen=True)
class DeployOptions:
    """How the compiled pipeline is placed on a cluster; the defaults compile a plain CPU pipeline.

    gpu_type/gpu_count, node_selector and tolerations apply to the train step (the one that needs a GPU node);
    the PVC is mounted in every step, since the manifest names images under data_root.
    """

    gpu_type: str | None = None
    gpu_count: int = 1
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    pvc_name: str | None = None
    pvc_mount_path: str = "/data"
    #: False for local runs: kfp.local honours retry policies, and a deterministic failure would be retried
    #: with minutes of backoff.
    retries: bool = True


def _configure(task, step: str, options: DeployOptions, display_name: str):
    cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES[step]
    retries, backoff = RETRIES[step]
    task.set_display_name(display_name)
    task.set_caching_options(CACHING[step])
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    if options.retries:
        task.set_retry(num_retries=retries, backoff_duration=backoff, backoff_factor=BACKOFF_FACTOR,
                       backoff_max_duration=BACKOFF_MAX)
    if options.pvc_name:
        from kfp import kubernetes

        kubernetes.mount_pvc(task, pvc_name=options.pvc_name, mount_path=options.pvc_mount_path)
    return task


def _place_training(task, options: DeployOptions) -> None:
    if options.gpu_type:
        task.set_accelerator_type(options.gpu_type).set_accelerator_limit(options.gpu_count)
        task.set_container_image(GPU_IMAGE)
    if options.node_selector or options.tolerations:
        from kfp import kubernetes

        for key, value in options.node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in options.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator="Equal" if t.value else "Exists", value=t.value,
                                      effect=t.effect)


# ---------------------------------------------------------------------------------------------------------
# The pipeline: its signature is generated from the config fields
# ---------------------------------------------------------------------------------------------------------
def pipeline_parameters() -> list[inspect.Parameter]:
    """Every pipeline parameter: the TrainConfig fields (same name, type, default), then PIPELINE_PARAMETERS."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(f.name, kind, default=f.default, annotation=cfg.field_type(f)) for f in cfg.fields()]
    clash = {p.name for p in params} & set(PIPELINE_PARAMETERS)
    if clash:
        raise RuntimeError(f"pipeline parameters {sorted(clash)} are also TrainConfig fields; rename them")
    params += [inspect.Parameter(name, kind, default=default, annotation=kind_)
               for name, (kind_, default, _) in PIPELINE_PARAMETERS.items()]
    return params


def _parameter_help() -> dict[str, str]:
    helps = {f.name: f.metadata["help"] for f in cfg.fields()}
    helps["save_path"] += " (ignored in the pipeline: the model is written to the train step's Model artifact)"
    helps.update({name: text for name, (_, _, text) in PIPELINE_PARAMETERS.items()})
    return helps


def build_pipeline(options: DeployOptions | None = None):
    """The pipeline (a KFP GraphComponent) for the given cluster placement."""
    options = options or DeployOptions()
    params = pipeline_parameters()
    names = [p.name for p in params]
    field_names = [f.name for f in cfg.fields()]

    def arcface_pipeline(*args):
        p = dict(zip(names, args, strict=True))
        validate = _configure(validate_data(config={name: p[name] for name in field_names},
                                            data_root=p["data_root"]),
                              "validate", options, "validate data and config")
        train = _configure(train_model(config=validate.outputs["config"], manifest=validate.outputs["manifest"]),
                           "train", options, "train")
        _place_training(train, options)
        evaluate = _configure(evaluate_model(model=train.outputs["model"], manifest=validate.outputs["manifest"],
                                             pairs_file=p["pairs_file"], pairs_root=p["pairs_root"],
                                             seed=p["seed"]),
                              "evaluate", options, "evaluate")
        gate = _configure(quality_gate(accuracy=evaluate.outputs["verification_accuracy"],
                                       accuracy_threshold=p["accuracy_threshold"],
                                       current_model_metrics=p["current_model_metrics"]),
                          "gate", options, "quality gate")
        with dsl.If(gate.output == True, name="quality-gate-passed"):  # noqa: E712 - a KFP condition
            _configure(export_model(model=train.outputs["model"], evaluation=evaluate.outputs["metrics"],
                                    manifest=validate.outputs["manifest"], formats=p["export_formats"], quantize=p["quantize"]),
                       "export", options, "export")

    helps = _parameter_help()
    arcface_pipeline.__signature__ = inspect.Signature(params)
    arcface_pipeline.__annotations__ = {p.name: p.annotation for p in params}
    arcface_pipeline.__doc__ = PIPELINE_DESCRIPTION + "\n\nArgs:\n" + "".join(
        f"    {name}: {helps[name]}\n" for name in names)
    return dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)(arcface_pipeline)


#: The default pipeline (CPU, no Kubernetes placement), for ``kfp dsl compile`` and imports.
arcface_pipeline = build_pipeline()


def compile_pipeline(output: str, options: DeployOptions | None = None) -> str:
    compiler.Compiler().compile(build_pipeline(options), output)
    return output


# ---------------------------------------------------------------------------------------------------------
# Parameter values from the command line
# ---------------------------------------------------------------------------------------------------------
def parameter_types() -> dict[str, type]:
    return {p.name: p.annotation for p in pipeline_parameters()}


def coerce_parameter(name: str, value: Any) -> Any:
    """A command-line value as the parameter's type; unknown names and bad values name the fix."""
    types = parameter_types()
    if name not in types:
        near = difflib.get_close_matches(name, types, n=1)
        raise ValueError(f"unknown pipeline parameter {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; known: {', '.join(types)}")
    if name in {f.name for f in cfg.fields()}:
        return cfg.from_dict({name: value}).to_dict()[name]  # the flags' own coercion and messages
    try:
        return types[name](value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {types[name].__name__}, got {value!r}") from None


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=3", "backbone=TinyFaceNet"]`` -> typed values."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        values[name.strip()] = coerce_parameter(name.strip(), value)
    return values


def config_file_params(path: str) -> dict[str, Any]:
    """The keys of a TrainConfig YAML file (strict: unknown keys and bad values are errors)."""
    import yaml

    loaded = cfg.load_yaml(path)  # raises ConfigError naming the key
    with open(path, encoding="utf-8") as f:
        keys = list(yaml.safe_load(f) or {})
    return {key: getattr(loaded, key) for key in keys}


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Validate the TrainConfig part before anything reaches a cluster (the validate step checks it again)."""
    fields = {f.name for f in cfg.fields()}
    cfg.from_dict({k: v for k, v in arguments.items() if k in fields}).validate()


# ---------------------------------------------------------------------------------------------------------
# run --local
# ---------------------------------------------------------------------------------------------------------
def local_arguments(*, config: str | None = None, data: str | None = None, params: Sequence[str] = (),
                    preset: bool = True) -> dict[str, Any]:
    """Pipeline arguments of a local run: LOCAL_PRESET < --config < --data < --param."""
    arguments: dict[str, Any] = dict(LOCAL_PRESET) if preset else {}
    if config:
        arguments.update(config_file_params(config))
    arguments["data_root"] = os.path.abspath(data or DEFAULT_LOCAL_DATA)
    arguments.update(parse_params(params))
    if arguments.get("data_root"):
        arguments["data_root"] = os.path.abspath(arguments["data_root"])
    return arguments


#: uid:gid the images run as (``USER 1000:1000`` in docker/Dockerfile*).
IMAGE_UID, IMAGE_GID = 1000, 1000
#: Parameters that may name host files or folders the steps read: under DockerRunner each one that exists is
#: bind-mounted read-only at the same path, so the manifest's absolute paths hold inside the containers too.
HOST_PATH_PARAMETERS = ("data_root", "train_data", "validation_data", "pairs_file", "pairs_root",
                        "current_model_metrics")


def _run_container_and_read_its_status(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp.local's ``run_docker_container`` without its blind spot.

    kfp 2.17.3 starts each step with ``auto_remove=True`` and, when the container is already gone by the time it
    asks for the exit status, assumes success: a step that fails fast (validate on a missing folder) then
    "passes" and the next step fails with a confusing error. Here the container is kept until its status is
    read, then removed.
    """
    from kfp.local import docker_task_handler

    image = docker_task_handler.add_latest_tag_if_not_present(image=image)
    if any(image in (i.tags + i.attrs["RepoDigests"]) for i in client.images.list()):
        print(f"Found image {image!r}\n")
    else:
        print(f"Pulling image {image!r}")
        client.images.pull(image)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True):
            print(line.decode(), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


def docker_runner(arguments: Mapping[str, Any], pipeline_root: str):
    """A kfp.local.DockerRunner for the images of this checkout (``docker/build.sh``), on the engine at DOCKER_HOST.

    * Data: every existing absolute path among :data:`HOST_PATH_PARAMETERS` is bind-mounted read-only at the same
      path (DockerRunner itself mounts only the pipeline root, read-write, at the same path). A path that does not
      exist is not mounted, so the validate step reports it as it does without Docker.
    * Users: a non-root caller runs the steps as its own uid:gid, so it can write its pipeline root and owns the
      outputs (HOME=/tmp: that uid has no home in the image). Root keeps the images' own non-root user
      (uid 1000) and hands it the pipeline root (chown), rather than running the steps as root.
    * Network: ``network_mode="none"``: the steps need none (docker/engine.sh's engine has no bridge anyway), and
      a step that tried to download something (e.g. pretrained weights) fails at once instead of hanging.
    * Images: kfp pulls an image it does not find by tag; there is no registry for these tags, so a missing one
      is an error here that names the build command instead.
    """
    from kfp import local
    from kfp.local import docker_task_handler

    import docker as docker_sdk
    from components.common import CPU_IMAGE, LIGHT_IMAGE

    try:
        client = docker_sdk.from_env()
        try:
            missing = []
            for image in sorted({CPU_IMAGE, LIGHT_IMAGE}):
                try:
                    client.images.get(image)
                except docker_sdk.errors.ImageNotFound:
                    missing.append(image)
        finally:
            client.close()
    except docker_sdk.errors.DockerException as e:
        raise RuntimeError(f"no Docker engine at {os.environ.get('DOCKER_HOST') or 'the default socket'} ({e}); "
                           'start one: eval "$(docker/engine.sh start)"') from None
    if missing:
        raise RuntimeError(f"image(s) {', '.join(missing)} not in the Docker engine; build them: docker/build.sh")

    paths = {os.path.abspath(str(arguments[name])) for name in HOST_PATH_PARAMETERS
             if arguments.get(name) and os.path.isabs(str(arguments[name])) and os.path.exists(arguments[name])}
    mounts = [docker_sdk.types.Mount(target=path, source=path, type="bind", read_only=True) for path in sorted(paths)]
    run_args: dict[str, Any] = {"mounts": mounts, "network_mode": "none"}
    if os.getuid() == 0:
        os.chown(pipeline_root, IMAGE_UID, IMAGE_GID)
    else:
        run_args.update(user=f"{os.getuid()}:{os.getgid()}", environment={"HOME": "/tmp"})
    docker_task_handler.run_docker_container = _run_container_and_read_its_status
    return local.DockerRunner(**run_args)


def run_local(arguments: Mapping[str, Any], output: str, *, docker: bool = False) -> dict[str, Any]:
    """Run the whole DAG here (SubprocessRunner in this environment, or DockerRunner on the images).

    Returns a summary: the run folder, each task's output files, the evaluation numbers and the gate decision.
    A failing task raises RuntimeError (its log, with the library's message, is printed above it).
    """
    from kfp import local

    root = os.path.abspath(output)
    os.makedirs(root, exist_ok=True)
    runner = docker_runner(arguments, root) if docker else local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=root, raise_on_error=True)
    before = set(os.listdir(root))
    started = time.monotonic()
    build_pipeline(DeployOptions(retries=False))(**arguments)
    new = sorted((d for d in os.listdir(root) if d not in before and d.startswith(PIPELINE_NAME)),
                 key=lambda d: os.path.getmtime(os.path.join(root, d)))
    if not new:
        raise RuntimeError(f"the local run wrote no folder under {root}")
    summary = summarize_run(os.path.join(root, new[-1]))
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def summarize_run(run_dir: str) -> dict[str, Any]:
    """What a local run left: {task: [output paths]}, the evaluation summary, the gate decision."""
    tasks = {}
    for task in sorted(os.listdir(run_dir)):
        task_dir = os.path.join(run_dir, task)
        if os.path.isdir(task_dir):
            tasks[task] = sorted(os.path.join(task_dir, name) for name in os.listdir(task_dir))
    summary: dict[str, Any] = {"run_dir": run_dir, "tasks": tasks, "metrics": None, "exported": None}
    metrics_file = os.path.join(run_dir, "evaluate-model", "metrics", "metrics.json")
    if os.path.exists(metrics_file):
        with open(metrics_file, encoding="utf-8") as f:
            summary["metrics"] = json.load(f)["summary"]
    exported = os.path.join(run_dir, "export-model", "exported")
    summary["exported"] = exported if os.path.isdir(exported) else None
    return summary


def _print_summary(summary: Mapping[str, Any]) -> None:
    print(f"\nlocal run finished in {summary['seconds']} s; outputs under {summary['run_dir']}")
    for task, paths in summary["tasks"].items():
        print(f"  {task}:")
        for path in paths:
            print(f"    {path}")
    if summary["metrics"]:
        print("evaluation:")
        for key, value in summary["metrics"].items():
            print(f"  {key}: {value}")
    print(f"exported model: {summary['exported']}" if summary["exported"]
          else "export skipped by the quality gate (see the quality-gate task's log above)")


# ---------------------------------------------------------------------------------------------------------
# submit / schedule
# ---------------------------------------------------------------------------------------------------------
_EVERY = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_every(text: str) -> int:
    """``7d``, ``12h``, ``30m``, ``3600s`` or ``3600`` -> seconds."""
    match = _EVERY.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--every {text!r}: expected a positive count with an optional unit s, m, h, d or w "
                         "(e.g. 7d)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def check_cron(text: str) -> str:
    """KFP's cron has six fields, seconds first (``0 0 3 * * 0``: Sundays at 03:00)."""
    n = len(text.split())
    if n != 6:
        hint = f"; prefix a seconds field: '0 {text}'" if n == 5 else ""
        raise ValueError(f"--cron {text!r} has {n} fields; KFP expects 6 (second minute hour day month "
                         f"weekday){hint}")
    return text


def make_client(host: str, token: str | None = None, namespace: str | None = None):
    import kfp

    return kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")


def submit(host: str, arguments: Mapping[str, Any], *, options: DeployOptions | None = None,
           experiment: str = "arcface", namespace: str | None = None, token: str | None = None,
           run_name: str | None = None, pipeline_root: str | None = None):
    """Compile with ``options`` and start one run; return kfp's RunPipelineResult."""
    check_arguments(arguments)
    client = make_client(host, token, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(os.path.join(tmp, f"{PIPELINE_NAME}.yaml"), options)
        return client.create_run_from_pipeline_package(
            package, arguments=dict(arguments), run_name=run_name, experiment_name=experiment,
            namespace=namespace, pipeline_root=pipeline_root)


def schedule(host: str, arguments: Mapping[str, Any], *, cron: str | None = None, every: str | None = None,
             options: DeployOptions | None = None, experiment: str = "arcface", namespace: str | None = None,
             token: str | None = None, name: str = "arcface-retrain", pipeline_root: str | None = None):
    """Create a recurring run: one at a time (max_concurrency=1), no backfill of missed runs (no_catchup)."""
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of --cron and --every")
    cron = check_cron(cron) if cron else None
    interval = parse_every(every) if every else None
    check_arguments(arguments)
    client = make_client(host, token, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(os.path.join(tmp, f"{PIPELINE_NAME}.yaml"), options)
        return client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, description=PIPELINE_DESCRIPTION,
            cron_expression=cron, interval_second=interval, max_concurrency=1, no_catchup=True,
            params=dict(arguments), pipeline_package_path=package, pipeline_root=pipeline_root, enabled=True)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def _add_deploy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster placement (compile-time)")
    g.add_argument("--gpu", metavar="RESOURCE", help="accelerator resource of the train step, e.g. nvidia.com/gpu "
                                                     "(also switches it to the GPU image)")
    g.add_argument("--gpu-count", type=int, default=1, help="accelerators for the train step (default 1)")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                   help="node label the train step must run on (repeatable)")
    g.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="taint the train step tolerates, e.g. nvidia.com/gpu:NoSchedule (repeatable)")
    g.add_argument("--pvc", metavar="NAME", help="PersistentVolumeClaim holding the data, mounted in every step")
    g.add_argument("--pvc-mount", default="/data", metavar="PATH", help="where the PVC is mounted (default /data)")


def deploy_options(args: argparse.Namespace) -> DeployOptions:
    selectors = []
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--node-selector {item!r}: expected KEY=VALUE")
        selectors.append((key, value))
    return DeployOptions(gpu_type=args.gpu, gpu_count=args.gpu_count, node_selector=tuple(selectors),
                         tolerations=tuple(Toleration.parse(t) for t in args.toleration), pvc_name=args.pvc,
                         pvc_mount_path=args.pvc_mount)


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter (any TrainConfig flag, or " + ", ".join(PIPELINE_PARAMETERS)
                        + "); repeatable")


def _add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--token", help="bearer token (e.g. a service-account token)")
    p.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
    p.add_argument("--experiment", default="arcface", help="experiment name (created when missing)")
    p.add_argument("--pipeline-root", help="where artifacts go (default: the deployment's)")
    p.add_argument("--max_minutes", type=float, help="training time budget in minutes (the max_minutes flag)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline.py", description=PIPELINE_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="write the pipeline's IR YAML")
    p.add_argument("--output", default=f"{PIPELINE_NAME}.yaml")
    _add_deploy_options(p)

    p = sub.add_parser("run", help="run the whole pipeline on this machine")
    p.add_argument("--local", action="store_true",
                   help="run here with kfp.local (always the case; kept for the documented `run --local`)")
    p.add_argument("--docker", action="store_true",
                   help="run each step in its image with kfp.local's DockerRunner (images from docker/build.sh, "
                        "engine at DOCKER_HOST); the data folder is mounted read-only into the containers")
    p.add_argument("--config", help="YAML of TrainConfig keys (strict)")
    p.add_argument("--data", help=f"data root holding train/ and validation/ (default: {DEFAULT_LOCAL_DATA})")
    p.add_argument("--output", default="runs/local", help="pipeline root for the outputs (default runs/local)")
    p.add_argument("--no-preset", action="store_true",
                   help="start from the pipeline's defaults (ResNet50, 100 epochs) instead of the local preset")
    _add_params(p)

    p = sub.add_parser("submit", help="compile and start one run on a KFP deployment")
    _add_server(p)
    p.add_argument("--run-name")
    _add_params(p)
    _add_deploy_options(p)

    p = sub.add_parser("schedule", help="compile and create a recurring run (one at a time, no catch-up)")
    _add_server(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="six-field cron, seconds first, e.g. '0 0 3 * * 0' (Sundays 03:00)")
    when.add_argument("--every", help="interval, e.g. 7d, 12h, 30m")
    p.add_argument("--name", default="arcface-retrain", help="recurring run name")
    _add_params(p)
    _add_deploy_options(p)
    return parser


def _server_arguments(args: argparse.Namespace) -> dict[str, Any]:
    arguments = parse_params(args.param)
    if args.max_minutes is not None:
        arguments["max_minutes"] = coerce_parameter("max_minutes", args.max_minutes)
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "compile":
            path = compile_pipeline(args.output, deploy_options(args))
            print(f"wrote {path}")
        elif args.command == "run":
            arguments = local_arguments(config=args.config, data=args.data, params=args.param,
                                        preset=not args.no_preset)
            print("pipeline arguments: " + ", ".join(f"{k}={v!r}" for k, v in arguments.items()))
            _print_summary(run_local(arguments, args.output, docker=args.docker))
        elif args.command == "submit":
            result = submit(args.host, _server_arguments(args), options=deploy_options(args),
                            experiment=args.experiment, namespace=args.namespace, token=args.token,
                            run_name=args.run_name, pipeline_root=args.pipeline_root)
            print(f"submitted run {result.run_id}")
        else:
            job = schedule(args.host, _server_arguments(args), cron=args.cron, every=args.every,
                           options=deploy_options(args), experiment=args.experiment, namespace=args.namespace,
                           token=args.token, name=args.name, pipeline_root=args.pipeline_root)
            print(f"created recurring run {job.recurring_run_id}")
    except (ValueError, RuntimeError) as e:  # ConfigError and DataError are ValueErrors with the fix in them
        print(f"pipeline.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
