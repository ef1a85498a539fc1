"""Running the whole DAG on this machine: ``pipeline.py run --local`` (kfp.local's SubprocessRunner, in this
environment) and ``run --docker`` (DockerRunner, every step in its image).

A run prints one line per step and a summary at the end; everything the steps and kfp.local print (the step
logs, the executor's input and output JSON) goes to ``run.log`` in the run folder, and the failing step's last
lines are shown when a step fails.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

from kfp_pipeline.dag import PIPELINE_NAME, DeployOptions, build_pipeline, config_file_params, parse_params

#: The root of this checkout, which holds the bundled sample (not an image repository: see components.common).
CHECKOUT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: ``run --local`` defaults: a small model that runs the whole DAG on the bundled sample in a few minutes on a
#: 2-core CPU. Overridden by --config, --data and --param; ``--no-preset`` runs the pipeline's own defaults.
LOCAL_PRESET: dict[str, Any] = {
    "backbone": "MobileFaceNet", "image_size": 64, "embedding_size": 128, "epochs": 12, "batch_size": 16,
    "lr": 0.05, "warmup_epochs": 1.0, "enhance": 32.0, "accuracy_threshold": 0.5,
}
DEFAULT_LOCAL_DATA = os.path.join(CHECKOUT_DIR, "sample", "orl")
LOG_FILE = "run.log"
SUMMARY_FILE = "summary.json"


def local_arguments(*, config: str | None = None, data: str | None = None, params: Sequence[str] = (),
                    preset: bool = True) -> dict[str, Any]:
    """Pipeline arguments of a local run: LOCAL_PRESET < --config < --data < --param. Unless one of them sets
    n_classes, the validate step takes it from the data (n_classes=0), so ``--data YOUR_FACES`` works as the run's
    own hint prints it, whatever the number of people."""
    arguments: dict[str, Any] = dict(LOCAL_PRESET) if preset else {}
    if config:
        arguments.update(config_file_params(config))
    arguments["data_root"] = os.path.abspath(data or DEFAULT_LOCAL_DATA)
    arguments.update(parse_params(params))
    arguments.setdefault("n_classes", 0)
    if arguments.get("data_root"):
        arguments["data_root"] = os.path.abspath(arguments["data_root"])
    return arguments


#: uid:gid the images run as (``USER 1000:1000`` in docker/Dockerfile*).
IMAGE_UID, IMAGE_GID = 1000, 1000
#: Parameters that may name host files or folders the steps read: under DockerRunner each one that exists is
#: bind-mounted read-only at the same path, so the manifest's absolute paths hold inside the containers too.
HOST_PATH_PARAMETERS = ("data_root", "train_data", "validation_data", "pairs_file", "pairs_root")
#: Parameters naming host folders the steps write: mounted read-write (and created) under DockerRunner.
WRITABLE_PATH_PARAMETERS = ("model_store",)


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
      exist is not mounted, so the validate step reports it as it does without Docker. ``model_store`` (read by
      evaluate, written by promote and the exit step) is created and mounted read-write at the same path.
    * Users: a non-root caller runs the steps as its own uid:gid, so it can write its pipeline root and owns the
      outputs (HOME=/tmp: that uid has no home in the image). Root keeps the images' own non-root user
      (uid 1000) and hands it the pipeline root (chown), rather than running the steps as root.
    * Network: ``network_mode="none"``: the steps need none (docker/engine.sh's engine has no bridge anyway), and
      a step that tried to download something (e.g. pretrained weights) fails at once instead of hanging.
    * Images: kfp pulls an image it does not find by tag; there is no registry for these tags, so a missing one
      is an error here that names the build command instead.
    """
    from kfp import local

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
    for name in WRITABLE_PATH_PARAMETERS:
        if arguments.get(name) and str(arguments[name]).strip():
            path = os.path.abspath(str(arguments[name]).strip())
            os.makedirs(path, exist_ok=True)
            mounts.append(docker_sdk.types.Mount(target=path, source=path, type="bind", read_only=False))
    run_args: dict[str, Any] = {"mounts": mounts, "network_mode": "none"}
    if os.getuid() == 0:
        os.chown(pipeline_root, IMAGE_UID, IMAGE_GID)
    else:
        run_args.update(user=f"{os.getuid()}:{os.getgid()}", environment={"HOME": "/tmp"})
    return local.DockerRunner(**run_args)


@contextlib.contextmanager
def _containers_read_before_removal() -> Iterator[None]:
    """Swap in :func:`_run_container_and_read_its_status` for the length of one of our runs, then put kfp's back."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = _run_container_and_read_its_status
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


# ---------------------------------------------------------------------------------------------------------
# Progress on the terminal, everything else in run.log
# ---------------------------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_STARTED = re.compile(r"Executing task '([\w-]+)'")
_TASK_ENDED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
#: Lines of a step's own output worth showing as progress: the trainer's epoch lines, the champion's score, the
#: gate's decision, the promotion and how the run ended (the exit step).
_PROGRESS_LINES = re.compile(r"^\s*(epoch \d+/\d+:|champion:|quality gate:|promote:|run ended:)")


class _ProgressLog(io.TextIOBase):
    """A text stream that writes everything to the log and a line per step (and its progress) to the terminal."""

    def __init__(self, log: TextIO, terminal: TextIO):
        self.log, self.terminal = log, terminal
        self._partial = ""
        self._started: dict[str, float] = {}
        self.lines: collections.deque[str] = collections.deque(maxlen=200)  # the current task's last lines
        self.failed_task: str | None = None
        self.failed_lines: list[str] = []  # the first failed task's lines: the exit step runs after it

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def _line(self, line: str) -> None:
        if started := _TASK_STARTED.search(line):
            task = started.group(1)
            self._started[task] = time.monotonic()
            self.lines.clear()
            self._say(f"[{time.strftime('%H:%M:%S')}] {task} ...")
        elif ended := _TASK_ENDED.search(line):
            task, status = ended.groups()
            seconds = time.monotonic() - self._started.get(task, time.monotonic())
            if status != "SUCCESS" and self.failed_task is None:
                self.failed_task, self.failed_lines = task, list(self.lines)
            self._say(f"[{time.strftime('%H:%M:%S')}] {task} {'done' if status == 'SUCCESS' else status} "
                      f"({seconds:.0f} s)")
        else:
            self.lines.append(line)
            if _PROGRESS_LINES.match(line):
                self._say("    " + line.strip())

    def _say(self, text: str) -> None:
        print(text, file=self.terminal, flush=True)


@contextlib.contextmanager
def _progress_on(terminal: TextIO | None, log_path: str) -> Iterator[_ProgressLog | None]:
    """With a terminal: the run's output goes to ``log_path`` and progress lines to the terminal."""
    if terminal is None:
        yield None
        return
    with open(log_path, "w", encoding="utf-8") as log:
        stream = _ProgressLog(log, terminal)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield stream


def require_docker_sdk() -> None:
    """kfp.local imports the Docker SDK (``docker``) for every runner; say what to do when it is not the SDK.

    Run from the repository root, ``import docker`` without the SDK installed finds this repository's docker/
    folder (the image recipes) as a namespace package, and kfp fails with an AttributeError deep inside.
    """
    import docker

    if not hasattr(docker, "DockerClient"):
        where = ", ".join(getattr(docker, "__path__", [])) or getattr(docker, "__file__", "?")
        raise RuntimeError(f"`import docker` found {where}, not the Docker SDK that kfp.local needs; install "
                           "the project's dependencies (`pip install -e .` brings docker>=7) in this environment")


def run_local(arguments: Mapping[str, Any], output: str, *, docker: bool = False,
              progress: TextIO | None = None) -> dict[str, Any]:
    """Run the whole DAG here (SubprocessRunner in this environment, or DockerRunner on the images).

    With ``progress`` (a terminal), the steps' output goes to ``run.log`` in the run folder and ``progress``
    gets a line per step; without it, everything is printed as kfp.local prints it.
    Returns :func:`summarize_run`'s summary, also written to ``summary.json`` in the run folder. A failing step
    raises RuntimeError naming it; with ``progress`` its last log lines are in the message.
    """
    require_docker_sdk()
    from kfp import local

    root = os.path.abspath(output)
    os.makedirs(root, exist_ok=True)
    runner = docker_runner(arguments, root) if docker else local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=root, raise_on_error=True)
    before = set(os.listdir(root))
    started = time.monotonic()
    log_path = os.path.join(root, f".{LOG_FILE}.{os.getpid()}")
    stream = None
    try:
        with contextlib.ExitStack() as stack:
            if docker:
                stack.enter_context(_containers_read_before_removal())
            stream = stack.enter_context(_progress_on(progress, log_path))
            build_pipeline(DeployOptions(retries=False))(**arguments)
    except RuntimeError as e:
        run_dir = _new_run_dir(root, before)
        log = _keep_log(log_path, run_dir) if stream else None
        if stream is None:
            raise
        tail = "\n".join(f"    {line}" for line in (stream.failed_lines or list(stream.lines))[-15:] if line.strip())
        raise RuntimeError(f"{e}\n  last lines of {stream.failed_task or 'the failing step'}:\n{tail}\n"
                           f"  the whole log: {log}") from None
    run_dir = _new_run_dir(root, before)
    if run_dir is None:
        raise RuntimeError(f"the local run wrote no folder under {root}")
    summary = summarize_run(run_dir)
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["log"] = _keep_log(log_path, run_dir) if stream else None
    from arcface import atomic

    atomic.write_json(os.path.join(run_dir, SUMMARY_FILE), summary)
    return summary


def _new_run_dir(root: str, before: set[str]) -> str | None:
    new = sorted((d for d in os.listdir(root) if d not in before and d.startswith(PIPELINE_NAME)),
                 key=lambda d: os.path.getmtime(os.path.join(root, d)))
    return os.path.join(root, new[-1]) if new else None


def _keep_log(log_path: str, run_dir: str | None) -> str | None:
    if not os.path.exists(log_path):
        return None
    if run_dir is None:
        return log_path
    target = os.path.join(run_dir, LOG_FILE)
    os.replace(log_path, target)
    return target


# Where kfp.local puts each task's outputs: <run folder>/<task name>/<output name>.
VALIDATE_TASK, TRAIN_TASK, EVALUATE_TASK, GATE_TASK, EXPORT_TASK, PROMOTE_TASK = (
    "validate-data", "train-model", "evaluate-model", "quality-gate", "export-model", "promote-model")
ALIGN_TASK = "align-faces"


def summarize_run(run_dir: str) -> dict[str, Any]:
    """What a local run left: {task: [output paths]}, the evaluation summary, the gate decision, the export."""
    tasks = {}
    for task in sorted(os.listdir(run_dir)):
        task_dir = os.path.join(run_dir, task)
        if os.path.isdir(task_dir):
            tasks[task] = sorted(os.path.join(task_dir, name) for name in os.listdir(task_dir))
    summary: dict[str, Any] = {"run_dir": run_dir, "tasks": tasks, "metrics": None, "exported": None,
                               "model": None, "manifest": None, "aligned": None, "promoted": None}
    from arcface import contracts

    evaluation = os.path.join(run_dir, EVALUATE_TASK, "metrics")
    if contracts.EvaluationDir.exists(evaluation):
        summary["metrics"] = contracts.EvaluationDir.read(evaluation).to_dict()
    for key, path in (("model", os.path.join(run_dir, TRAIN_TASK, "model")),
                      ("manifest", os.path.join(run_dir, VALIDATE_TASK, "manifest")),
                      ("aligned", os.path.join(run_dir, ALIGN_TASK, "aligned")),
                      ("exported", os.path.join(run_dir, EXPORT_TASK, "exported"))):
        summary[key] = path if os.path.isdir(path) else None
    promoted = os.path.join(run_dir, PROMOTE_TASK, "executor_output.json")
    if os.path.isfile(promoted):
        import json

        with open(promoted, encoding="utf-8") as f:
            summary["promoted"] = json.load(f)["parameterValues"]["Output"] or None  # 0: no store
    return summary


def print_summary(summary: Mapping[str, Any], file: TextIO | None = None) -> None:
    """Where the outputs are, the headline numbers, where the exported model is, what to try next."""
    say = lambda text="": print(text, file=file or sys.stdout)  # noqa: E731
    say(f"\nfinished in {summary['seconds']:.0f} s; everything is under {summary['run_dir']}")
    for label, key in (("validated data", "manifest"), ("aligned faces", "aligned"), ("trained model", "model"),
                       ("exported model", "exported")):
        if summary.get(key):
            say(f"  {label + ':':16} {summary[key]}")
    if summary.get("log"):
        say(f"  {'step logs:':16} {summary['log']}")
    metrics = summary["metrics"] or {}
    if metrics:
        say("evaluation (validation identities):")
        for key, label in (("verification_accuracy", "verification accuracy"), ("auc", "ROC AUC"),
                           ("eer", "equal error rate"), ("threshold", "cosine threshold"),
                           ("top1_accuracy", "closed-set top-1"), ("top5_accuracy", "closed-set top-5")):
            if metrics.get(key) is not None:
                say(f"  {label + ':':23} {metrics[key]:.4f}")
        if metrics.get("genuine_pairs") is not None:
            say(f"  {'pairs:':23} {metrics['genuine_pairs']} genuine + {metrics['impostor_pairs']} impostor")
    if not summary["exported"]:
        say("not exported: the quality gate held it back (its reason is above and in the step logs)")
        return
    if summary.get("promoted"):
        say(f"promoted: version {summary['promoted']} is now current in the model store "
            "(python pipeline.py models list --store ...)")
    exported = os.path.relpath(summary["exported"])
    if exported.startswith(".."):
        exported = summary["exported"]
    say("next:")
    say(f"  arcface compare --model {exported} FACE1.jpg FACE2.jpg")
    say(f"  arcface embed --model {exported} FOLDER -o embeddings.npy")
    say("  python pipeline.py run --local --data YOUR_FACES   (a folder with train/<person>/ and validation/<person>/)")
