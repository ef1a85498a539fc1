"""KFP component: train on N workers as a TFJob (Kubeflow Training Operator); the chief's model folder becomes the
step's Model artifact, read by evaluate and export exactly as the single-pod train step's."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def launch_tfjob(config: dict, manifest: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                 workers: int, image: str, pvc_name: str, pvc_mount_path: str, gpus_per_worker: int,
                 gpu_resource: str, resources: dict, node_selector: dict, tolerations: list,
                 timeout_minutes: float, poll_seconds: float = 10.0, namespace: str = "",
                 model_store: str = "", model_name: str = "arcface", run_id: str = ""):
    """Stage the manifest on the PVC, create the TFJob, follow it (state changes and the chief's log), then copy
    the chief's model folder into ``model.path`` (arcface.mlops.tfjob.launch). A step that fails or is terminated
    (a run stopped from the UI: SIGTERM) deletes the TFJob it created, so that its pods free their GPUs.

    Args:
        config: the validated TrainConfig from the validate step (its save_path is replaced by model/ in this
            run's folder on the PVC, which only the chief writes).
        manifest: the align step's folder artifact, copied onto the PVC for the workers.
        model: the chief's model folder (arcface.contracts.ModelDir), as the train step writes it.
        metrics: epochs_completed, steps, images_per_second, best_val_accuracy, final loss and accuracy, workers.
        workers, image, gpus_per_worker, gpu_resource, resources, node_selector, tolerations: the Worker replicas
            (compile-time: ``pipeline.py compile --workers N --gpus-per-worker G``).
        pvc_name, pvc_mount_path: the shared PVC, mounted here and in every worker at the same path.
        timeout_minutes: the TFJob is deleted and the step fails after this; poll_seconds: status poll interval.
        namespace: the TFJob's namespace; empty: this pod's.
        model_store, model_name, run_id: where a failure of this step is recorded (arcface.mlops.notify); run_id also
            names the TFJob and its folder, so a retried step follows the job its first attempt created.
    """
    from arcface.mlops.notify import failures_logged
    from arcface.mlops.tfjob import TFJobRequest, in_cluster, job_name, launch

    with failures_logged("launch-tfjob", model_store=model_store, model_name=model_name, run_id=run_id):
        api_client, own_namespace = in_cluster()
        timeout_seconds = timeout_minutes * 60
        request = TFJobRequest(
            name=job_name(run_id or "run"), namespace=namespace or own_namespace, image=image, workers=workers,
            config=config, pvc_name=pvc_name, pvc_mount_path=pvc_mount_path, gpus_per_worker=gpus_per_worker,
            gpu_resource=gpu_resource, resources=resources, node_selector=node_selector, tolerations=tolerations,
            deadline_seconds=int(timeout_seconds) + 600)
        result = launch(request, manifest.path, model.path, api_client=api_client, poll_seconds=poll_seconds,
                        timeout_seconds=timeout_seconds)
        metrics.log_metric("workers", workers)
        for key in ("epochs_completed", "steps"):
            if result.get(key) is not None:
                metrics.log_metric(key, result[key])
        if result.get("images_per_second") is not None:
            metrics.log_metric("images_per_second", round(float(result["images_per_second"]), 3))
        if result.get("best_val_accuracy") is not None:
            metrics.log_metric("best_val_accuracy", float(result["best_val_accuracy"]))
        if result.get("history"):
            last = result["history"][-1]
            for key in ("loss", "accuracy", "val_accuracy"):
                if last.get(key) is not None:
                    metrics.log_metric(f"final_{key}", float(last[key]))
        model.metadata.update({"framework": "tensorflow", "backbone": config["backbone"],
                               "margin": config["margin"], "stopped": result.get("stopped"),
                               "manifest_sha256": result.get("manifest_sha256"), "workers": workers,
                               "tfjob": f"{request.namespace}/{request.name}"})
