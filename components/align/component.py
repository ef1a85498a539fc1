"""KFP component: detect and align the faces of the validated manifest (arcface.data.align.run_alignment)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.common import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def align_faces(config: dict, manifest: Input[Dataset], aligned: Output[Dataset], report: Output[Markdown],
                model_store: str = "", model_name: str = "arcface", run_id: str = ""):
    """Align every validated image (``align=mtcnn``) or pass the manifest through (``align=none``).

    Args:
        config: the validated TrainConfig from the validate step (align, align_cache, image_size, strict,
            n_classes are read).
        manifest: the validate step's folder artifact (arcface.contracts.ManifestDir).
        aligned: folder artifact (arcface.contracts.AlignedDir): a manifest that train, evaluate and export
            read like the validate step's, whose rows are the face crops in crops/, plus alignment.json
            (per source image: path, sha256, box, 5 points, score, findings) and the report.
        report: the alignment report as Markdown, for the KFP UI (the validation report when align=none).
        model_store, model_name, run_id: where a failure of this step is recorded for the exit step
            (arcface.mlops.notify.failures_logged: the store's run log); empty model_store: nowhere.
    """
    import os
    import shutil

    from arcface.config import from_dict
    from arcface.contracts import AlignedDir
    from arcface.data.align import run_alignment
    from arcface.mlops.notify import failures_logged

    with failures_logged("align-faces", model_store=model_store, model_name=model_name, run_id=run_id):
        checked = from_dict(config)
        result = run_alignment(manifest.path, aligned.path, method=checked.align, image_size=checked.image_size,
                               cache_dir=checked.align_cache or None, strict=checked.strict,
                               n_classes=checked.n_classes)
        shown = AlignedDir.report_markdown_file(aligned.path)
        if os.path.isfile(shown):
            shutil.copyfile(shown, report.path)
        aligned.metadata.update({"sha256": result.sha256, "n_classes": len(result.class_names),
                                 "align": checked.align, "train_images": len(result.split("train")),
                                 "validation_images": len(result.split("validation"))})
