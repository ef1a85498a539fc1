"""The retraining loop end to end: four local runs against one model store on the bundled sample (10 people).

1. a model trained hastily (one epoch at a high learning rate): the store is empty, the threshold alone
   decides: version 1;
2. a model that learns nothing (one epoch at lr 1e-8): scored against version 1 on the same pairs, not promoted;
3. a model trained properly (20 epochs): beats version 1 on the same pairs: version 2, which replaced 1;
   rollback returns to version 1;
4. a run whose evaluate step fails (a pairs file that does not exist): the store is untouched and the run log
   names the step and its error.

The runs are seeded, so their numbers repeat on a machine; but on the sample's 30 validation faces (60 pairs)
they move by up to 0.08 with the seed (measured with arcface.train/evaluate directly: one epoch at lr 1.0 0.58
and 0.73, 10 epochs 0.73 and 0.82, untrained 0.67 and 0.72), so the order of runs 1-3 is that of seed 42 on the
unaligned sample; another seed, alignment or TensorFlow build may reorder them. Every assertion on the gate
is also checked against the numbers themselves. The fused BatchNorm kernel of training (arcface.models.fast_training)
changed the round-off and with it seed 42's draw: 10 epochs then scored 0.67 against run 1's 0.73, so run 3 trains
20 epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipeline
from arcface import contracts
from arcface.store import ModelStore
from tests.pipeline.test_local_run import TINY

# All ten sample identities: with the four of test_local_run, an untrained TinyFaceNet already separates the 24
# pairs perfectly (pixels alone tell four people apart), and nothing could beat it. Unaligned: faster, and the
# order above was measured so.
PEOPLE = {**TINY, "n_classes": 10, "align": "none"}
FIRST = {**PEOPLE, "epochs": 1, "lr": 1.0}
WORSE = {**PEOPLE, "epochs": 1, "lr": 1e-8}  # lr must be > 0: this one learns nothing
BETTER = {**PEOPLE, "epochs": 20}


def run(faces: Path, tmp_path: Path, store: Path, **changes) -> dict:
    arguments = {**changes, "data_root": str(faces), "model_store": str(store), "model_name": "faces",
                 "accuracy_threshold": 0.0, "keep_versions": 5}
    return pipeline.run_local(arguments, str(tmp_path / "runs"))


def gate_numbers(summary: dict) -> dict:
    """What the quality gate logged in its Metrics output and wrote in its Markdown."""
    run_dir = Path(summary["run_dir"])
    output = json.loads((run_dir / "quality-gate" / "executor_output.json").read_text())
    logged = output["artifacts"]["decision"]["artifacts"][0]["metadata"]
    markdown = (run_dir / "quality-gate" / "summary").read_text()
    return {**logged, "deploy": output["parameterValues"]["Output"], "markdown": markdown}


def champion_in(summary: dict) -> tuple[int | None, contracts.EvaluationSummary] | None:
    return contracts.EvaluationDir.read_champion(Path(summary["run_dir"]) / "evaluate-model" / "metrics")


@pytest.mark.slow
def test_the_loop_promotes_only_what_beats_the_champion_on_the_same_pairs(sample_dir, tmp_path):
    faces = sample_dir  # read only: no step writes under data_root
    store_dir = tmp_path / "store"
    store = ModelStore(store_dir, "faces")

    first = run(faces, tmp_path, store_dir, **FIRST)
    assert champion_in(first) is None  # empty store: nothing to compare with
    gate = gate_numbers(first)
    assert gate["deploy"] is True and "champion_accuracy" not in gate and first["promoted"] == 1
    assert store.versions() == [1] and store.current() == 1
    lineage = store.lineage(1)
    assert lineage.replaced is None and lineage.run_id == Path(first["run_dir"]).name
    assert lineage.metrics == first["metrics"] and lineage.config["epochs"] == FIRST["epochs"]
    # The manifest training read: the align step's (the validated one, passed through, with align=none).
    manifest = contracts.AlignedDir.read(Path(first["run_dir"]) / "align-faces" / "aligned")
    assert lineage.manifest_sha256 == manifest.sha256
    # The version folder is a SavedModel as TF Serving loads it: its serving signature embeds encoded images.
    import tensorflow as tf

    served = tf.saved_model.load(str(store.version_dir(1)))
    image = tf.io.encode_png(tf.zeros([60, 50, 3], tf.uint8))
    embedding = served.signatures["serving_default"](images=tf.stack([image]))["embedding"].numpy()
    assert embedding.shape == (1, TINY["embedding_size"])
    assert abs(float((embedding ** 2).sum()) - 1.0) < 1e-4
    # `arcface serve|compare --model <store>/<model>/1` reads the card and model.keras beside it (assets.extra/).
    from arcface.embedding import load_embedder

    embedder = load_embedder(store.version_dir(1))
    card = contracts.ExportDir.read_card(Path(store.extra_dir(1)))
    assert embedder.image_size == TINY["image_size"] and embedder.threshold == card["threshold"] is not None

    again = run(faces, tmp_path, store_dir, **WORSE)
    version, champion = champion_in(again)
    # The champion (version 1, loaded from the store) was scored on the same pairs as the new model and by the
    # same protocol as in run 1 (the same seeded pairs): its numbers are run 1's own.
    assert version == 1
    assert (champion.genuine_pairs, champion.impostor_pairs) == (again["metrics"]["genuine_pairs"],
                                                                 again["metrics"]["impostor_pairs"])
    for key in ("verification_accuracy", "auc", "eer"):
        assert getattr(champion, key) == pytest.approx(first["metrics"][key], abs=1e-5), key
    assert again["metrics"]["verification_accuracy"] <= champion.verification_accuracy, (again["metrics"], champion)
    gate = gate_numbers(again)
    assert gate["deploy"] is False and again["promoted"] is None and again["exported"] is None
    assert gate["champion_accuracy"] == champion.verification_accuracy
    assert "**Keep the champion**" in gate["markdown"] and "(version 1)" in gate["markdown"]
    assert store.versions() == [1] and store.current() == 1

    better = run(faces, tmp_path, store_dir, **BETTER)
    version, champion = champion_in(better)
    assert version == 1
    assert better["metrics"]["verification_accuracy"] > champion.verification_accuracy, (better["metrics"], champion)
    assert gate_numbers(better)["deploy"] is True and better["promoted"] == 2
    assert store.versions() == [1, 2] and store.current() == 2
    lineage = store.lineage(2)
    assert lineage.replaced == 1 and lineage.champion_metrics == champion.to_dict()

    assert pipeline.main(["models", "rollback", "--store", str(store_dir), "--model", "faces"]) == 0
    assert store.current() == 1
    assert pipeline.main(["models", "rollback", "--store", str(store_dir), "--model", "faces", "--version", "2"]) == 0

    before = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if "runs.jsonl" not in p.name)
    with pytest.raises(RuntimeError, match="Inner task failed"):
        run(faces, tmp_path, store_dir, **{**PEOPLE, "epochs": 1}, pairs_file=str(tmp_path / "no-pairs.txt"))
    after = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if "runs.jsonl" not in p.name)
    assert after == before and store.current() == 2

    ends = [r for r in store.runs() if r["kind"] == "run_end"]
    assert [r["state"] for r in ends] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert [r["run_id"] for r in ends[:3]] == [Path(s["run_dir"]).name for s in (first, again, better)]
    # kfp.local names only the exit handler's group; the step's own record names the step and its error.
    assert ends[3]["platform_task"] == "exit-handler-1"
    assert ends[3]["failed_task"] == "evaluate-model" and "no-pairs.txt" in ends[3]["error_message"]
