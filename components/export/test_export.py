"""export_model: its Python function with real artifacts, then through kfp.local (slow: TF)."""

from __future__ import annotations

import numpy as np
import pytest
from kfp import dsl, local
from PIL import Image

from arcface import artifacts
from arcface.contracts import KFOLD_MEAN, EvaluationDir, EvaluationSummary, ExportDir, ManifestDir
from components.export import export_model
from components.train.test_train import TINY, tiny_model

EVALUATION = EvaluationSummary(verification_accuracy=0.9, verification_accuracy_kind=KFOLD_MEAN, threshold=0.3,
                               auc=0.95, eer=0.1, genuine_pairs=300, impostor_pairs=300, flip_tta=True,
                               tar_at_far={"1e-02": 0.6})


def evaluation_artifact(tmp_path) -> dsl.Metrics:
    folder = tmp_path / "evaluation"
    EvaluationDir.write(folder, EVALUATION)
    return dsl.Metrics(name="metrics", uri=str(folder))


def faces_as_the_model_reads_them(paths: list[str], side: int) -> np.ndarray:
    """Pillow and NumPy: RGB, resized to side x side, (x - 127.5) / 128, independent of arcface's decoding."""
    images = [np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.BILINEAR), np.float32)
              for p in paths]
    return (np.stack(images) - 127.5) / 128.0


@pytest.mark.slow
def test_function_exports_a_model_that_embeds_faces_and_a_card_that_describes_it(tmp_path):
    manifest_dir, model_dir = tiny_model()
    exported = dsl.Model(name="exported", uri=str(tmp_path / "exported"))
    export_model.python_func(model=dsl.Model(name="model", uri=model_dir), evaluation=evaluation_artifact(tmp_path),
                             manifest=dsl.Dataset(name="manifest", uri=manifest_dir), formats="keras, saved_model",
                             quantize="none", exported=exported)

    model = artifacts.load_keras(tmp_path / "exported" / ExportDir.KERAS_FILE)
    faces = ManifestDir.read(manifest_dir).absolute_paths("validation")
    embeddings = np.asarray(model(faces_as_the_model_reads_them(faces, TINY.image_size), training=False))
    assert embeddings.shape == (9, TINY.embedding_size)  # 3 identities x 3 validation faces, 32-d
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    card = ExportDir.read_card(exported.path)
    assert set(card["formats"]) == {"keras", "saved_model"}
    assert card["embedding_size"] == TINY.embedding_size and card["input"]["image_size"] == TINY.image_size
    assert card["check_images"] == {"source": "given", "count": 9,
                                    "files": [f.rsplit("/", 1)[-1] for f in faces]}
    assert ExportDir.card_evaluation(card) == EVALUATION
    assert card["threshold"] == 0.3 and card["evaluation"]["tar_at_far_1e-02"] == 0.6
    assert card["evaluation"]["source"] == str(tmp_path / "evaluation" / "metrics.json")
    assert exported.metadata["formats"] == card["formats"] and exported.metadata["input_size"] == 48
    assert exported.metadata["embedding_size"] == TINY.embedding_size


@pytest.mark.slow
def test_component_through_the_local_runner(tmp_path):
    manifest_dir, model_dir = tiny_model()
    evaluation = evaluation_artifact(tmp_path)

    @dsl.pipeline(name="export-only")
    def export_only():
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        metrics = dsl.importer(artifact_uri=evaluation.uri, artifact_class=dsl.Metrics)
        manifest = dsl.importer(artifact_uri=manifest_dir, artifact_class=dsl.Dataset)
        export_model(model=model.output, evaluation=metrics.output, manifest=manifest.output, formats="keras",
                     quantize="none")

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    export_only()
    (run_dir,) = [p for p in (tmp_path / "root").iterdir() if p.is_dir()]
    exported = run_dir / "export-model" / "exported"
    assert (exported / ExportDir.KERAS_FILE).is_file()
    assert ExportDir.card_evaluation(ExportDir.read_card(exported)) == EVALUATION
