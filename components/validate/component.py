"""KFP component: validate the training config and the face folders, write the manifest.

The first step of the pipeline, so a bad parameter (``penalty=-1``) or a missing data folder fails here,
with the library's message, before any TensorFlow image is pulled.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.common import LIGHT_IMAGE


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def validate_data(config: dict, data_root: str, manifest: Output[Dataset], report: Output[Markdown],
                  model_store: str = "", model_name: str = "arcface", run_id: str = "") -> NamedTuple("ValidateOutputs", [("config", dict)]):
    """Validate the config and the data; return the resolved config for the train step.

    Args:
        config: TrainConfig keys (every pipeline parameter that mirrors a flag); n_classes 0 means as many as
            the data holds.
        data_root: a folder holding train/ and validation/; when set it replaces train_data and validation_data.
        manifest: folder artifact (arcface.contracts.ManifestDir): the manifest (the images training may
            read, with their hashes) and the report as JSON and Markdown.
        report: the same report as Markdown, for the KFP UI.
        model_store, model_name, run_id: where a failure of this step is recorded for the exit step
            (arcface.mlops.notify.failures_logged: the store's run log); empty model_store: nowhere.

    Returns:
        config: the validated TrainConfig as a dict, with train_data and validation_data resolved to absolute folders.
    """
    import shutil
    from collections import namedtuple

    from arcface.config import from_dict
    from arcface.contracts import ManifestDir
    from arcface.data import resolve_roots, run_validation
    from arcface.mlops.notify import failures_logged

    with failures_logged("validate-data", model_store=model_store, model_name=model_name, run_id=run_id):
        values = dict(config)  # members arrive as strings ('3.0' for an int): from_dict converts and checks them
        if data_root:
            values.update(train_data=data_root, validation_data=data_root)
        from_data = from_dict(values).n_classes == 0
        checked = from_dict({**values, "n_classes": 2} if from_data else values).validate()
        train_root, validation_root = resolve_roots(checked.train_data, checked.validation_data)
        result = run_validation(train_root, validation_root, manifest.path,
                                n_classes=None if from_data else checked.n_classes,
                                min_images=checked.min_images, strict=checked.strict)
        if from_data:
            found = len(result.manifest.class_names)
            print(f"n_classes: {found}, the usable identities in {train_root} (n_classes=0 takes the count from the "
                  "data; pass n_classes=N to require that many)")
            checked = checked.replace(n_classes=found).validate()
        shutil.copyfile(ManifestDir.report_markdown_file(manifest.path), report.path)
        counts = result.report["counts"]
        manifest.metadata.update({"sha256": result.manifest.sha256, "n_classes": len(result.manifest.class_names),
                                  "train_images": counts["train"]["images"],
                                  "validation_images": counts["validation"]["images"], "clean": result.ok})
        resolved = checked.replace(train_data=train_root, validation_data=validation_root)
        return namedtuple("ValidateOutputs", ["config"])(resolved.to_dict())
