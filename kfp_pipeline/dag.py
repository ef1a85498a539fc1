"""The pipeline's DAG: its parameters (generated from the config), its steps, and their cluster placement.

validate -> align -> train -> evaluate (new model and the store's champion, same pairs) -> quality gate ->
(dsl.If) export -> promote, all under a dsl.ExitHandler whose step records how the run ended. With ``workers`` > 1
(``pipeline.py compile --workers N``) the train step is a launcher that trains on N pods as a Training Operator
TFJob and hands on the chief's model folder (components/launch_tfjob, arcface.mlops.tfjob). Every field of
:class:`arcface.config.TrainConfig` is a pipeline parameter with the same name, type and default (the signature is
generated from ``arcface.config.fields()``, so a new flag is a new parameter), plus the few that only the pipeline
has (:data:`PIPELINE_PARAMETERS`: data_root, pairs, the quality gate, export).

Nothing here imports TensorFlow: the component bodies import the library inside their containers.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kfp import compiler, dsl

from arcface import __version__
from arcface import config as cfg
from arcface.choices import EXPORT_FORMATS, QUANTIZE
from arcface.mlops import images
from components.align import align_faces
from components.common import CPU_IMAGE, FLAVOR_OF_TAG, GPU_IMAGE, REPOSITORY
from components.evaluate import evaluate_model, quality_gate
from components.export import export_model
from components.launch_tfjob import launch_tfjob
from components.notify import report_run_end
from components.promote import promote_model
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
    "promotion_margin": (float, 0.0, "quality gate: promote only when the new model's accuracy beats the "
                                     "champion's, on the same pairs, by more than this"),
    "model_store": (str, "", "model store folder (e.g. on a mounted PVC): the champion is read from it and a "
                             "promoted model written to it as <model_name>/<version>/. Empty: no store, the "
                             "threshold alone decides and nothing is promoted"),
    "model_name": (str, "arcface", "the model's folder in model_store"),
    "warm_start": (bool, True, "train from the model store's champion when model_store holds one (the identities "
                               "it knows keep their head rows); false: from scratch. A non-empty init_from wins"),
    "keep_versions": (int, 5, "versions kept in the store after a promotion (0 keeps all; the current one is "
                              "never removed)"),
    "notify_url": (str, "", "webhook that receives how the run ended as JSON (POST); empty: none"),
    "export_formats": (str, ",".join(EXPORT_FORMATS), "comma-separated export formats"),
    "quantize": (str, QUANTIZE[0], f"{', '.join(QUANTIZE[:-1])} or {QUANTIZE[-1]} (adds a quantized TFLite file)"),
}


# Step settings. Caching is off everywhere: validate and the gate read things their cache key cannot see (the
# images under data_root, the champion in model_store), training must never be skipped, evaluate/export/promote
# consume the fresh model of this run, so a cache hit is impossible for them anyway, and the exit step must run.
CACHING = {"validate": False, "align": False, "train": False, "launch": False, "evaluate": False, "gate": False,
           "export": False, "promote": False, "notify": False}
# (cpu request, cpu limit, memory request, memory limit)
RESOURCES = {
    "validate": ("1", "4", "1Gi", "4Gi"),
    "align": ("2", "4", "4Gi", "8Gi"),
    "train": ("4", "8", "8Gi", "16Gi"),  # also each TFJob worker's (--workers N)
    "launch": ("250m", "1", "512Mi", "2Gi"),  # the TFJob launcher: API calls and copying folders
    "evaluate": ("2", "4", "4Gi", "8Gi"),
    "gate": ("100m", "500m", "128Mi", "256Mi"),
    "export": ("2", "4", "4Gi", "8Gi"),
    "promote": ("500m", "1", "512Mi", "1Gi"),
    "notify": ("100m", "500m", "128Mi", "256Mi"),
}
# Transient failures only (node preemption, a volume or object store that hiccups): (retries, first backoff).
# Training retries once: a retried pod gets a new, empty model folder, so it continues from the last checkpoint
# only with checkpoint_dir on a volume (the train step keys it by the run name); a genuine bug fails again quickly.
# Promote is not retried: a retry after its pointer moved would find another champion and refuse anyway.
# A retried TFJob launcher follows the job its first attempt created (the job is named after the run).
RETRIES = {"validate": (2, "30s"), "align": (2, "30s"), "train": (1, "120s"), "launch": (1, "120s"),
           "evaluate": (2, "30s"), "gate": (2, "10s"), "export": (2, "30s"), "promote": (0, "0s"),
           "notify": (2, "10s")}
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

    workers > 1 trains on that many pods instead: the train step becomes a launcher (components/launch_tfjob)
    that runs a TFJob of the Kubeflow Training Operator, whose workers get gpus_per_worker accelerators of
    gpu_type (default nvidia.com/gpu), the node selector and the tolerations; it needs the PVC (the workers
    share a folder of the run on it) and gives up (deleting the job) after tfjob_timeout_minutes.

    images: the image references (:class:`arcface.mlops.images.ImagePins`, from ``pipeline.py compile --image-digests``
    or the digests file ``docker/build.sh --push`` wrote); None keeps the tags.
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
    workers: int = 1
    gpus_per_worker: int = 0
    tfjob_timeout_minutes: float = 3 * 24 * 60
    images: images.ImagePins | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers}: expected 1 or more")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker {self.gpus_per_worker}: expected 0 or more")
        if self.workers == 1:
            if self.gpus_per_worker:
                raise ValueError("--gpus-per-worker applies to --workers N > 1 (a TFJob); the single train step "
                                 "takes --gpu RESOURCE --gpu-count N")
            return
        if not self.pvc_name:
            raise ValueError(f"--workers {self.workers} needs --pvc NAME: the TFJob's workers read the data and "
                             "write the model in a folder of the run on that volume")
        if self.gpu_type and not self.gpus_per_worker:
            raise ValueError(f"--gpu {self.gpu_type} with --workers {self.workers}: give --gpus-per-worker G, the "
                             "accelerators of each worker")
        if self.tfjob_timeout_minutes <= 0:
            raise ValueError(f"--tfjob-timeout {self.tfjob_timeout_minutes:g}: expected a positive number of minutes")

    @property
    def tfjob(self) -> bool:
        return self.workers > 1

    def tfjob_arguments(self) -> dict[str, Any]:
        """The launcher's compile-time arguments: the Worker replicas and the volume."""
        cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES["train"]
        return {"workers": self.workers, "image": GPU_IMAGE if self.gpus_per_worker else CPU_IMAGE,
                "pvc_name": self.pvc_name, "pvc_mount_path": self.pvc_mount_path,
                "gpus_per_worker": self.gpus_per_worker, "gpu_resource": self.gpu_type or "nvidia.com/gpu",
                "resources": {"cpu_request": cpu_request, "cpu_limit": cpu_limit, "memory_request": memory_request,
                              "memory_limit": memory_limit},
                "node_selector": dict(self.node_selector),
                "tolerations": [{"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect} if t.value
                                else {"key": t.key, "operator": "Exists", "effect": t.effect} for t in self.tolerations],
                "timeout_minutes": float(self.tfjob_timeout_minutes)}


def _configure(task, step: str, options: DeployOptions, display_name: str):
    cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES[step]
    retries, backoff = RETRIES[step]
    task.set_display_name(display_name)
    task.set_caching_options(CACHING[step])
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    if options.retries and retries:
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
    helps["n_classes"] += " (0: as many as the validate step finds usable in the data)"
    helps.update({name: text for name, (_, _, text) in PIPELINE_PARAMETERS.items()})
    return helps


def build_pipeline(options: DeployOptions | None = None):
    """The pipeline (a KFP GraphComponent) for the given cluster placement."""
    options = options or DeployOptions()
    params = pipeline_parameters()
    names = [p.name for p in params]
    field_names = [f.name for f in cfg.fields()]

    def training_steps(p):
        # Every step records its own failure in the store's run log under this run (arcface.mlops.notify).
        run = {"model_store": p["model_store"], "model_name": p["model_name"],
               "run_id": dsl.PIPELINE_JOB_NAME_PLACEHOLDER}
        validate = _configure(validate_data(config={name: p[name] for name in field_names},
                                            data_root=p["data_root"], **run),
                              "validate", options, "validate data and config")
        # train, evaluate and export read the align step's manifest (its crops; the validated one with align=none)
        align = _configure(align_faces(config=validate.outputs["config"], manifest=validate.outputs["manifest"],
                                       **run),
                           "align", options, "align faces")
        if options.tfjob:  # N workers: a launcher step runs them as a TFJob; its model artifact is the chief's
            train = _configure(launch_tfjob(config=validate.outputs["config"], manifest=align.outputs["aligned"],
                                            **options.tfjob_arguments(), **run),
                               "launch", options, f"train (TFJob, {options.workers} workers)")
        else:
            train = _configure(train_model(config=validate.outputs["config"], manifest=align.outputs["aligned"],
                                           warm_start=p["warm_start"], **run),
                               "train", options, "train")
            _place_training(train, options)
        evaluate = _configure(evaluate_model(model=train.outputs["model"], manifest=align.outputs["aligned"],
                                             pairs_file=p["pairs_file"], pairs_root=p["pairs_root"],
                                             seed=p["seed"], **run),
                              "evaluate", options, "evaluate")
        gate = _configure(quality_gate(evaluation=evaluate.outputs["metrics"],
                                       accuracy_threshold=p["accuracy_threshold"],
                                       promotion_margin=p["promotion_margin"], **run),
                          "gate", options, "quality gate")
        with dsl.If(gate.outputs["Output"] == True, name="quality-gate-passed"):  # noqa: E712 - a KFP condition
            export = _configure(export_model(model=train.outputs["model"], evaluation=evaluate.outputs["metrics"],
                                             manifest=align.outputs["aligned"], formats=p["export_formats"],
                                             quantize=p["quantize"], **run),
                                "export", options, "export")
            _configure(promote_model(exported=export.outputs["exported"], evaluation=evaluate.outputs["metrics"],
                                     keep_versions=p["keep_versions"], **run),
                       "promote", options, "promote to the model store")

    def arcface_pipeline(*args):
        p = dict(zip(names, args, strict=True))
        # Runs after the steps whatever their outcome: the store's run log and the webhook hear how it ended.
        report = _configure(report_run_end(model_store=p["model_store"], model_name=p["model_name"],
                                           notify_url=p["notify_url"], run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                            "notify", options, "report how the run ended")
        with dsl.ExitHandler(report, name="training-steps"):
            training_steps(p)

    helps = _parameter_help()
    arcface_pipeline.__signature__ = inspect.Signature(params)
    arcface_pipeline.__annotations__ = {p.name: p.annotation for p in params}
    arcface_pipeline.__doc__ = PIPELINE_DESCRIPTION + "\n\nArgs:\n" + "".join(
        f"    {name}: {helps[name]}\n" for name in names)
    return dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)(arcface_pipeline)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _replace_strings(value: Any, mapping: Mapping[str, str], found: set[str]) -> Any:
    if isinstance(value, str):
        if value in mapping:
            found.add(value)
            return mapping[value]
        return value
    if isinstance(value, dict):
        return {k: _replace_strings(v, mapping, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, mapping, found) for v in value]
    return value


def pin_images(pipeline, pins: images.ImagePins | None) -> dict[str, str]:
    """Name the images of ``pipeline`` (a compiled GraphComponent, changed in place) as ``pins`` say: every string of
    its spec that is one of our tags (the executors' images, the TFJob launcher's worker image) becomes the flavor's
    digest reference where ``pins`` has one. Returns the tags the spec holds -> the reference it now uses."""
    from google.protobuf import json_format

    pins = pins or images.ImagePins(REPOSITORY, __version__)
    if pins.repository != REPOSITORY or pins.version != __version__:
        raise ValueError(f"image pins for {pins.repository} {pins.version}, but the components name "
                         f"{REPOSITORY} {__version__} (ARCFACE_IMAGE_REPOSITORY when they were imported)")
    mapping = {tag: pins.reference(flavor) or tag for tag, flavor in FLAVOR_OF_TAG.items()}
    spec = pipeline.pipeline_spec
    found: set[str] = set()
    as_dict = _replace_strings(json_format.MessageToDict(spec), mapping, found)
    if any(mapping[tag] != tag for tag in found):
        spec.Clear()
        json_format.ParseDict(as_dict, spec)
    return {tag: mapping[tag] for tag in sorted(found, key=list(FLAVOR_OF_TAG).index)}


def compile_pipeline(output: str, options: DeployOptions | None = None,
                     report: Callable[[str], None] | None = _stderr) -> str:
    """Write the pipeline's IR YAML to ``output``; its images are named as ``options.images`` says (digest or tag),
    and ``report`` (default: stderr) hears one line per image saying which reference was used and why."""
    options = options or DeployOptions()
    pipeline = build_pipeline(options)
    used = pin_images(pipeline, options.images)
    compiler.Compiler().compile(pipeline, output)
    if report is not None:
        pins = options.images or images.ImagePins(REPOSITORY, __version__)
        for tag in used:
            report(f"image {pins.describe(FLAVOR_OF_TAG[tag], tag)}")
    return output


# ---------------------------------------------------------------------------------------------------------
# Parameter values from the command line
# ---------------------------------------------------------------------------------------------------------
def parameter_types() -> dict[str, type]:
    return {p.name: p.annotation for p in pipeline_parameters()}


def coerce_parameter(name: str, value: Any) -> Any:
    """A command-line value as the parameter's type; unknown names and bad values name the fix."""
    name = cfg.aliases().get(name, name)  # the original --use_param_folder is init_from
    types = parameter_types()
    if name not in types:
        near = difflib.get_close_matches(name, types, n=1)
        raise ValueError(f"unknown pipeline parameter {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; known: {', '.join(types)}")
    if name in {f.name for f in cfg.fields()}:
        return cfg.from_dict({name: value}).to_dict()[name]  # the flags' own coercion and messages
    return cfg.coerce(name, value, types[name])  # bool("false") would be True


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=3", "backbone=TinyFaceNet"]`` -> typed values."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        values[cfg.aliases().get(name.strip(), name.strip())] = coerce_parameter(name.strip(), value)
    return values


def config_file_params(path: str) -> dict[str, Any]:
    """The keys of a TrainConfig YAML file (strict: unknown keys and bad values are errors)."""
    import yaml

    loaded = cfg.load_yaml(path)  # raises ConfigError naming the key
    with open(path, encoding="utf-8") as f:
        keys = list(yaml.safe_load(f) or {})
    spelled = cfg.aliases()
    return {spelled.get(key, key): getattr(loaded, spelled.get(key, key)) for key in keys}


def check_arguments(arguments: Mapping[str, Any]) -> None:
    """Validate the TrainConfig part before anything reaches a cluster (the validate step checks it again)."""
    fields = {f.name for f in cfg.fields()}
    cfg.from_dict({k: v for k, v in arguments.items() if k in fields}).validate()


