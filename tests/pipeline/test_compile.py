"""The compiled pipeline: DAG, parameters mirroring TrainConfig, images, caching, retries, resources, golden file.

Regenerate the golden file after an intended change with:

    python pipeline.py compile --output tests/pipeline/golden/arcface_pipeline.yaml
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline
from arcface import config as cfg
from arcface.mlops import images
from kfp_pipeline import cli as pipeline_cli
from kfp_pipeline import cluster, dag, local

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "arcface_pipeline.yaml"
KFP_TYPES = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING", bool: "BOOLEAN"}
STEPS = {"validate-data": "validate", "align-faces": "align", "train-model": "train", "evaluate-model": "evaluate",
         "quality-gate": "gate", "export-model": "export", "promote-model": "promote",
         "report-run-end": "notify"}


@pytest.fixture(autouse=True)
def no_image_digests(tmp_path, monkeypatch):
    """`pipeline.py compile` reads build/image-digests.json when a push left one: not here, these tests want tags."""
    monkeypatch.setenv(images.DIGESTS_ENV, str(tmp_path / "no-image-digests.json"))


def compile_docs(tmp_path, options=None) -> list[dict]:
    path = dag.compile_pipeline(str(tmp_path / "p.yaml"), options)
    with open(path, encoding="utf-8") as f:
        return list(yaml.safe_load_all(f))


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    return compile_docs(tmp_path_factory.mktemp("compile"))[0]


def all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the root DAG and of its sub-DAGs (the exit handler's, the condition's), by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        if "dag" in component:
            tasks.update(component["dag"]["tasks"])
    return tasks


def steps_dag(spec: dict) -> dict[str, dict]:
    """The tasks under the exit handler: the pipeline's steps."""
    return spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]


def test_the_exit_step_runs_after_the_steps_whatever_their_outcome(spec):
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "report-run-end"}
    report = root["report-run-end"]
    assert report["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert report["dependentTasks"] == ["exit-handler-1"]
    assert report["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    for name in ("model_store", "model_name", "notify_url"):
        assert report["inputs"]["parameters"][name] == {"componentInputParameter": name}


def test_dag_edges(spec):
    root = steps_dag(spec)
    deps = {name: set(task.get("dependentTasks", [])) for name, task in root.items()}
    assert deps["validate-data"] == set()
    assert deps["align-faces"] == {"validate-data"}
    assert deps["train-model"] == {"validate-data", "align-faces"}  # the config from validate, crops from align
    assert deps["evaluate-model"] == {"train-model", "align-faces"}
    assert deps["quality-gate"] == {"evaluate-model"}
    condition = root["condition-2"]
    assert "quality-gate" in condition["dependentTasks"]
    assert condition["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--quality-gate-Output'] == true"
    inner = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(inner) == {"export-model", "promote-model"}
    promote = inner["promote-model"]
    assert promote["dependentTasks"] == ["export-model"]
    assert promote["inputs"]["artifacts"]["exported"]["taskOutputArtifact"] == {
        "outputArtifactKey": "exported", "producerTask": "export-model"}
    assert promote["inputs"]["artifacts"]["evaluation"] == {
        "componentInputArtifact": "pipelinechannel--evaluate-model-metrics"}
    # The gate reads evaluate's evaluation (the Metrics artifact), as export does.
    gate_inputs = root["quality-gate"]["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]
    assert gate_inputs == {"outputArtifactKey": "metrics", "producerTask": "evaluate-model"}
    export_inputs = inner["export-model"]["inputs"]["artifacts"]["evaluation"]
    assert export_inputs == {"componentInputArtifact": "pipelinechannel--evaluate-model-metrics"}


def test_every_config_field_is_a_parameter_with_its_default(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    for field in cfg.fields():
        assert field.name in params, f"TrainConfig.{field.name} is not a pipeline parameter"
        p = params[field.name]
        assert p["parameterType"] == KFP_TYPES[cfg.field_type(field)], field.name
        assert p["defaultValue"] == field.default, field.name  # ints come back as 10.0 == 10
        assert p["description"].startswith(field.metadata["help"]), field.name
    for name, (kind, default, _) in dag.PIPELINE_PARAMETERS.items():
        assert params[name]["parameterType"] == KFP_TYPES[kind]
        assert params[name]["defaultValue"] == default
    assert set(params) == {f.name for f in cfg.fields()} | set(dag.PIPELINE_PARAMETERS)


def test_original_flag_defaults_are_kept(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["backbone"]["defaultValue"] == "ResNet50"
    assert params["epochs"]["defaultValue"] == 100
    assert params["batch_size"]["defaultValue"] == 10
    assert params["penalty"]["defaultValue"] == 0.5


def test_validate_step_receives_every_field(spec):
    config = steps_dag(spec)["validate-data"]["inputs"]["parameters"]["config"]
    constant = config["runtimeValue"]["constant"]
    assert set(constant) == {f.name for f in cfg.fields()}
    for name, value in constant.items():
        assert value == f"{{{{$.inputs.parameters['pipelinechannel--{name}']}}}}"


def test_images_come_from_arcface_images(spec):
    executors = spec["deploymentSpec"]["executors"]
    expected = {"exec-validate-data": images.validate_image(), "exec-quality-gate": images.validate_image(),
                "exec-align-faces": images.cpu_image(),  # TensorFlow and mtcnn
                "exec-train-model": images.cpu_image(), "exec-evaluate-model": images.cpu_image(),
                "exec-export-model": images.cpu_image(), "exec-promote-model": images.validate_image(),
                "exec-report-run-end": images.validate_image()}
    assert {name: e["container"]["image"] for name, e in executors.items()} == expected
    for executor in executors.values():
        container = executor["container"]
        assert not container["image"].endswith(":latest")
        assert "pip install" not in " ".join(container["command"])  # install_kfp_package=False, no packages


def test_caching_is_off(spec):
    tasks = all_tasks(spec)
    assert set(tasks) == set(STEPS) | {"condition-2", "exit-handler-1"}
    for name in STEPS:
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name


def test_retries(spec):
    tasks = all_tasks(spec)
    for name, step in STEPS.items():
        retries, backoff = dag.RETRIES[step]
        if not retries:
            assert "retryPolicy" not in tasks[name], name
            continue
        assert tasks[name]["retryPolicy"] == {"maxRetryCount": retries, "backoffDuration": backoff,
                                              "backoffFactor": dag.BACKOFF_FACTOR,
                                              "backoffMaxDuration": dag.BACKOFF_MAX}, name


def test_local_runs_have_no_retries(tmp_path):
    spec = compile_docs(tmp_path, dag.DeployOptions(retries=False))[0]
    assert all("retryPolicy" not in task for task in all_tasks(spec).values())


def test_resources(spec):
    executors = spec["deploymentSpec"]["executors"]
    for name, step in STEPS.items():
        cpu_request, cpu_limit, memory_request, memory_limit = dag.RESOURCES[step]
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert resources["resourceCpuRequest"] == cpu_request
        assert resources["resourceCpuLimit"] == cpu_limit
        assert resources["resourceMemoryRequest"] == memory_request
        assert resources["resourceMemoryLimit"] == memory_limit
        assert "accelerator" not in resources


def test_gpu_node_selector_toleration_and_pvc(tmp_path):
    code = pipeline.main(["compile", "--output", str(tmp_path / "gpu.yaml"), "--gpu", "nvidia.com/gpu",
                          "--gpu-count", "2", "--node-selector", "pool=gpu", "--toleration",
                          "nvidia.com/gpu:NoSchedule", "--pvc", "faces", "--pvc-mount", "/mnt/faces"])
    assert code == 0
    spec, platform = list(yaml.safe_load_all((tmp_path / "gpu.yaml").read_text()))
    train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["image"] == images.gpu_image()
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "2"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train-model"]["nodeSelector"] == {"labels": {"pool": "gpu"}}
    assert k8s["exec-train-model"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu",
                                                       "operator": "Exists"}]
    for executor in ("exec-validate-data", "exec-align-faces", "exec-train-model", "exec-evaluate-model",
                     "exec-quality-gate", "exec-export-model", "exec-promote-model", "exec-report-run-end"):
        mounts = k8s[executor]["pvcMount"]
        assert [(m["mountPath"], m["pvcNameParameter"]["runtimeValue"]["constant"]) for m in mounts] == \
            [("/mnt/faces", "faces")], executor
    assert "nodeSelector" not in k8s["exec-validate-data"]


def test_workers_turn_the_train_step_into_a_tfjob_launcher(tmp_path):
    code = pipeline.main(["compile", "--output", str(tmp_path / "tfjob.yaml"), "--workers", "2",
                          "--gpus-per-worker", "1", "--pvc", "faces", "--pvc-mount", "/mnt/faces",
                          "--node-selector", "pool=gpu", "--toleration", "nvidia.com/gpu:NoSchedule",
                          "--tfjob-timeout", "90"])
    assert code == 0
    spec, platform = list(yaml.safe_load_all((tmp_path / "tfjob.yaml").read_text()))
    steps = steps_dag(spec)
    assert "train-model" not in steps and "launch-tfjob" in steps
    launcher = steps["launch-tfjob"]
    assert set(launcher["dependentTasks"]) == {"validate-data", "align-faces"}
    assert launcher["taskInfo"]["name"] == "train (TFJob, 2 workers)"
    inputs = launcher["inputs"]
    assert inputs["parameters"]["config"]["taskOutputParameter"] == {"outputParameterKey": "config",
                                                                     "producerTask": "validate-data"}
    assert inputs["artifacts"]["manifest"]["taskOutputArtifact"] == {"outputArtifactKey": "aligned",
                                                                     "producerTask": "align-faces"}
    constants = {name: value["runtimeValue"]["constant"] for name, value in inputs["parameters"].items()
                 if "constant" in value.get("runtimeValue", {})}
    cpu_request, cpu_limit, memory_request, memory_limit = dag.RESOURCES["train"]
    assert constants == {
        "workers": 2, "gpus_per_worker": 1, "gpu_resource": "nvidia.com/gpu", "image": images.gpu_image(),
        "pvc_name": "faces", "pvc_mount_path": "/mnt/faces", "node_selector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"cpu_request": cpu_request, "cpu_limit": cpu_limit, "memory_request": memory_request,
                      "memory_limit": memory_limit},
        "timeout_minutes": 90.0, "run_id": "{{$.pipeline_job_name}}"}
    # evaluate and export read the launcher's model artifact as they read the train step's
    assert steps["evaluate-model"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model", "producerTask": "launch-tfjob"}
    assert steps["condition-2"]["inputs"]["artifacts"]["pipelinechannel--launch-tfjob-model"] == {
        "taskOutputArtifact": {"outputArtifactKey": "model", "producerTask": "launch-tfjob"}}
    # The launcher itself is a small CPU pod with the PVC; the GPUs, node selector and tolerations are the workers'.
    executor = spec["deploymentSpec"]["executors"]["exec-launch-tfjob"]["container"]
    assert executor["image"] == images.cpu_image() and "accelerator" not in executor["resources"]
    assert executor["resources"]["resourceCpuLimit"] == dag.RESOURCES["launch"][1]
    assert launcher["retryPolicy"]["maxRetryCount"] == dag.RETRIES["launch"][0]
    assert launcher["cachingOptions"].get("enableCache", False) is False
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-launch-tfjob"]
    assert [m["mountPath"] for m in k8s["pvcMount"]] == ["/mnt/faces"]
    assert "nodeSelector" not in k8s and "tolerations" not in k8s


@pytest.mark.parametrize(("flags", "message"), [
    (["--workers", "2"], "--workers 2 needs --pvc NAME"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker applies to --workers N > 1"),
    (["--workers", "2", "--pvc", "faces", "--gpu", "nvidia.com/gpu"], "give --gpus-per-worker G"),
    (["--workers", "0"], "expected 1 or more"),
])
def test_bad_worker_options_are_refused(tmp_path, capsys, flags, message):
    assert pipeline.main(["compile", "--output", str(tmp_path / "x.yaml"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_submit_and_schedule_take_the_worker_options():
    for command in (["submit", "--host", "http://kfp"], ["schedule", "--host", "http://kfp", "--every", "7d"]):
        args = pipeline_cli.build_parser().parse_args([*command, "--workers", "4", "--gpus-per-worker", "2",
                                                   "--pvc", "faces"])
        options = pipeline_cli.deploy_options(args)
        assert (options.workers, options.gpus_per_worker, options.tfjob) == (4, 2, True)


def test_bad_compile_options_are_refused(tmp_path, capsys):
    assert pipeline.main(["compile", "--output", str(tmp_path / "x.yaml"), "--toleration", "k:Sometimes"]) == 2
    assert "NoSchedule, PreferNoSchedule or NoExecute" in capsys.readouterr().err


def normalized(text: str) -> str:
    """The compiled YAML without what legitimately varies: the SDK version and the image repository."""
    lines = [line for line in text.splitlines() if not line.startswith("sdkVersion:")]
    return "\n".join(lines).replace(images.repository() + "/", images.DEFAULT_REPOSITORY + "/")


def test_golden_file(tmp_path):
    path = dag.compile_pipeline(str(tmp_path / "p.yaml"))
    got = normalized(Path(path).read_text(encoding="utf-8"))
    want = normalized(GOLDEN.read_text(encoding="utf-8"))
    assert got == want, ("the compiled pipeline differs from tests/pipeline/golden/arcface_pipeline.yaml; if the "
                         "change is intended, regenerate it: python pipeline.py compile --output "
                         "tests/pipeline/golden/arcface_pipeline.yaml")


def test_compiles_without_tensorflow(tmp_path):
    code = (f"import sys, pipeline; from kfp_pipeline import dag; dag.compile_pipeline({str(tmp_path / 'p.yaml')!r}); "
            "assert 'tensorflow' not in sys.modules, 'pipeline.py imported TensorFlow'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_export_formats_default_is_the_library_default():
    from arcface import export

    assert dag.PIPELINE_PARAMETERS["export_formats"][1] == ",".join(export.FORMATS)
    assert dag.PIPELINE_PARAMETERS["quantize"][1] == export.QUANTIZE[0]


def test_local_preset_is_a_valid_config_and_only_known_parameters():
    fields = {f.name for f in cfg.fields()}
    assert set(local.LOCAL_PRESET) <= fields | set(dag.PIPELINE_PARAMETERS)
    cfg.from_dict({k: v for k, v in local.LOCAL_PRESET.items() if k in fields}).validate()


def test_param_parsing():
    assert dag.parse_params(["epochs=3", "lr=0.01", "augment=false", "accuracy_threshold=0.8"]) == {
        "epochs": 3, "lr": 0.01, "augment": False, "accuracy_threshold": 0.8}
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        dag.parse_params(["epoch=3"])
    with pytest.raises(cfg.ConfigError, match="epochs: expected an integer"):
        dag.parse_params(["epochs=three"])
    # The original flag's spelling is the parameter init_from.
    assert dag.parse_params(["use_param_folder=/m/run1", "warm_start=false"]) == {
        "init_from": "/m/run1", "warm_start": False}
    assert cluster.parse_every("7d") == 7 * 86400
    assert cluster.parse_every("90m") == 5400
    with pytest.raises(ValueError, match="prefix a seconds field"):
        cluster.check_cron("0 3 * * 0")


def test_config_file_overrides_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nbackbone: TinyFaceNet\n")
    arguments = local.local_arguments(config=str(path), data=str(tmp_path), params=["epochs=1"])
    assert arguments["backbone"] == "TinyFaceNet" and arguments["epochs"] == 1
    assert arguments["image_size"] == local.LOCAL_PRESET["image_size"]
    assert arguments["data_root"] == str(tmp_path)
    path.write_text("epoch: 2\n")
    with pytest.raises(cfg.ConfigError, match="did you mean 'epochs'"):
        local.local_arguments(config=str(path))
    path.write_text("use_param_folder: /m/run1\n")  # the original key, as a training config file has it
    assert local.local_arguments(config=str(path))["init_from"] == "/m/run1"
