"""KFP component: train ArcFace on the validated manifest; the Model artifact's folder is the save_path."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_model(config: dict, manifest: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                model_store: str = "", model_name: str = "arcface", run_id: str = "", warm_start: bool = True):
    """Train; write checkpoints, logs, the resolved config and both Keras models under ``model.path``.

    Args:
        config: the validated TrainConfig from the validate step (its save_path is replaced by the artifact).
        manifest: the align step's folder artifact (arcface.contracts.AlignedDir, read as a ManifestDir).
        model: the model folder (arcface.contracts.ModelDir): training_model.keras, embedding_model.keras, best/,
            checkpoints/, logs/, config.yaml, metadata.json.
        metrics: epochs_completed, steps, images_per_second, best_val_accuracy, final loss and accuracy.
        model_store, model_name, run_id: where a failure of this step is recorded for the exit step
            (arcface.mlops.notify.failures_logged: the store's run log); empty model_store: nowhere. run_id (the KFP run
            name) is also the checkpoint_key when checkpoint_dir is set and the key is empty: a retry of this step
            (a new, empty model folder) resumes from the run's checkpoints, another run starts fresh.
        warm_start: with an empty init_from, start from model_store's champion when it has one
            (arcface.warm_start.pipeline_init_from); false: from scratch.
    """
    import re

    from arcface.config import from_dict
    from arcface.contracts import ManifestDir
    from arcface.mlops.notify import failures_logged
    from arcface.train import train
    from arcface.warm_start import pipeline_init_from

    with failures_logged("train-model", model_store=model_store, model_name=model_name, run_id=run_id):
        values = {**config, "save_path": model.path}
        if values.get("checkpoint_dir") and not values.get("checkpoint_key") and run_id:
            values["checkpoint_key"] = re.sub(r"[^A-Za-z0-9._-]", "-", run_id).lstrip(".")[:200]
        values["init_from"] = pipeline_init_from(values.get("init_from", ""), model_store, model_name, warm_start)
        result = train(from_dict(values), ManifestDir.read(manifest.path), model_store=model_store,
                       model_name=model_name)
        metrics.log_metric("epochs_completed", result.epochs_completed)
        metrics.log_metric("steps", result.steps)
        metrics.log_metric("images_per_second", round(float(result.images_per_second), 3))
        if result.best_val_accuracy is not None:
            metrics.log_metric("best_val_accuracy", float(result.best_val_accuracy))
        if result.history:
            last = result.history[-1]
            for key in ("loss", "accuracy", "val_accuracy"):
                if last.get(key) is not None:
                    metrics.log_metric(f"final_{key}", float(last[key]))
        model.metadata.update({"framework": "tensorflow", "backbone": config["backbone"],
                               "margin": config["margin"], "stopped": result.stopped,
                               "manifest_sha256": result.manifest_sha256,
                               "checkpoint_key": values.get("checkpoint_key", ""),
                               "init_from": values["init_from"]})
