"""KFP component: export the embedding model in the serving formats, each checked against Keras."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export_model(model: Input[Model], evaluation: Input[Metrics], manifest: Input[Dataset], formats: str,
                 quantize: str, exported: Output[Model], model_store: str = "", model_name: str = "arcface", run_id: str = ""):
    """Export ``model`` into ``exported.path`` with a model card; the artifact's metadata describes it.

    Args:
        model: the train step's model folder.
        evaluation: the evaluate step's Metrics artifact; its summary goes into the model card.
        manifest: the align step's manifest; its validation faces (aligned crops unless align=none) are what
            each export is checked on.
        formats: comma-separated, any of saved_model, keras, tflite, onnx.
        quantize: none, float16 or dynamic (adds a quantized TFLite file).
        exported: the exported model folder (formats, model card).
        model_store, model_name, run_id: where a failure of this step is recorded for the exit step
            (arcface.mlops.notify.failures_logged: the store's run log); empty model_store: nowhere.
    """
    from arcface.contracts import ManifestDir
    from arcface.export import export, kfp_model_metadata
    from arcface.mlops.notify import failures_logged

    with failures_logged("export-model", model_store=model_store, model_name=model_name, run_id=run_id):
        faces = ManifestDir.read(manifest.path).absolute_paths("validation")
        card = export(model.path, exported.path, formats=[f.strip() for f in formats.split(",") if f.strip()],
                      quantize=quantize, metrics_path=evaluation.path, check_images=faces or None)
        exported.metadata.update(kfp_model_metadata(card))
