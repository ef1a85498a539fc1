"""The retraining loop end to end: four local runs against one model store on the bundled sample (10 people).

Every run is scored on the same pairs with known answers: all pairs of each person's training faces (210) and as
many pairs of different people's, from a pairs file over the training faces themselves. Each face has a grey
square painted over its middle (a third of its shorter side wide). The runs differ in what they can know:

1. a model that learns nothing (one epoch at lr 1e-8: its initial weights, which tell faces apart by their pixels
   alone, 0.79-0.84 with seeds 42 and 7): the store is empty, the threshold alone decides: version 1;
2. a model that sees nothing: center_crop=0.2 keeps the middle fifth of each image, all of it inside the grey
   square, so every face is the same input to it, every pair gets the same score and its accuracy is chance,
   0.5: scored against version 1 on the same pairs, not promoted (trained with warm_start off: from scratch);
3. a model fitted to these very faces with their true identities (no augmentation, 20 epochs at lr 0.3: 1.0
   with seed 42; 0.98 and 0.99 with seeds 42 and 7 after 12 epochs), started from version 1 (warm_start, the
   default): beats version 1: version 2, which replaced 1, its lineage naming version 1 as where it started;
   rollback returns to version 1;
4. a run whose evaluate step fails (a pairs file that does not exist): the store is untouched and the run log
   names the step and its error.

So the order of runs 1-3 holds by construction, not by seed: run 2 cannot beat chance whatever its weights, and
run 3 is scored on the faces it was fitted to, where run 1 has only its pixels to go by. The margins asserted
(0.2 and 0.1) are several times what a seed, the TensorFlow build's round-off or the CPU's kernels move these
numbers. Every assertion on the gate is also checked against the numbers themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline
from arcface import contracts
from arcface.mlops.store import ModelStore
from kfp_pipeline import local
from tests.pipeline.test_local_run import TINY

# All ten sample identities (420 pairs, so one pair moves the accuracy by 0.002), unaligned (faster).
PEOPLE = {**TINY, "n_classes": 10, "align": "none", "batch_size": 8}
FIRST = {**PEOPLE, "epochs": 1, "lr": 1e-8}  # lr must be > 0: this one learns nothing
WORSE = {**PEOPLE, "epochs": 1, "center_crop": 0.2}  # sees only the grey square
BETTER = {**PEOPLE, "epochs": 20, "lr": 0.3}  # TINY trains without augmentation or dropout: it fits its faces


def painted_faces(sample_dir: Path, root: Path) -> tuple[Path, Path]:
    """(data root, pairs file): the sample's faces with a grey square over their middle, the training faces named
    as LFW names them (``<id>/<id>_<k:04d>.jpg``, PGM bytes as ORL's own: every reader decodes by content) so
    that the pairs file can name them; the pairs are every pair of one person's training faces and, for each
    face, the same face number of three other people."""
    for split in ("train", "validation"):
        for identity in os.listdir(sample_dir / split):
            for k, name in enumerate(sorted(os.listdir(sample_dir / split / identity), key=lambda n: int(n[:-4])), 1):
                pixels = np.array(Image.open(sample_dir / split / identity / name).convert("L"))
                height, width = pixels.shape
                half = min(height, width) // 6  # covers the center_crop=0.2 square (a fifth of the shorter side)
                pixels[height // 2 - half:height // 2 + half, width // 2 - half:width // 2 + half] = 128
                (root / split / identity).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / identity / f"{identity}_{k:04d}.jpg", format="PPM")
    identities = sorted(os.listdir(root / "train"), key=lambda name: int(name[1:]))
    faces = len(os.listdir(root / "train" / identities[0]))
    lines = [f"{a} {i} {j}" for a in identities for i in range(1, faces) for j in range(i + 1, faces + 1)]
    lines += [f"{a} {k} {identities[(n + shift) % len(identities)]} {k}" for n, a in enumerate(identities)
              for k in range(1, faces + 1) for shift in (1, 4, 7)]
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return root, pairs


def run(faces: Path, pairs: Path, tmp_path: Path, store: Path, **changes) -> dict:
    arguments = {"pairs_file": str(pairs), **changes, "data_root": str(faces), "pairs_root": str(faces / "train"),
                 "model_store": str(store), "model_name": "faces", "accuracy_threshold": 0.0, "keep_versions": 5}
    return local.run_local(arguments, str(tmp_path / "runs"))


def gate_numbers(summary: dict) -> dict:
    """What the quality gate logged in its Metrics output and wrote in its Markdown."""
    run_dir = Path(summary["run_dir"])
    output = json.loads((run_dir / "quality-gate" / "executor_output.json").read_text())
    logged = output["artifacts"]["decision"]["artifacts"][0]["metadata"]
    markdown = (run_dir / "quality-gate" / "summary").read_text()
    return {**logged, "deploy": output["parameterValues"]["Output"], "markdown": markdown}


def champion_in(summary: dict) -> tuple[int | None, contracts.EvaluationSummary] | None:
    return contracts.EvaluationDir.read_champion(Path(summary["run_dir"]) / "evaluate-model" / "metrics")


def trained_from(summary: dict) -> dict | None:
    """What the run's train step recorded it started from (arcface.warm_start)."""
    metadata = Path(summary["run_dir"]) / "train-model" / "model" / "metadata.json"
    return json.loads(metadata.read_text())["started_from"]


@pytest.mark.slow
def test_the_loop_promotes_only_what_beats_the_champion_on_the_same_pairs(sample_dir, tmp_path):
    faces, pairs = painted_faces(sample_dir, tmp_path / "faces")
    store_dir = tmp_path / "store"
    store = ModelStore(store_dir, "faces")

    first = run(faces, pairs, tmp_path, store_dir, **FIRST)
    assert champion_in(first) is None  # empty store: nothing to compare with
    assert (first["metrics"]["genuine_pairs"], first["metrics"]["impostor_pairs"]) == (210, 210)  # the pairs file
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

    again = run(faces, pairs, tmp_path, store_dir, **WORSE, warm_start=False)
    assert trained_from(again) is None  # warm_start off: from scratch, though the store has a champion
    version, champion = champion_in(again)
    # The champion (version 1, loaded from the store) was scored on the same pairs as the new model and by the
    # same protocol as in run 1 (its own crop, from its card: the whole face): its numbers are run 1's own.
    assert version == 1
    assert (champion.genuine_pairs, champion.impostor_pairs) == (again["metrics"]["genuine_pairs"],
                                                                 again["metrics"]["impostor_pairs"])
    for key in ("verification_accuracy", "auc", "eer"):
        assert getattr(champion, key) == pytest.approx(first["metrics"][key], abs=1e-5), key
    # Run 2 saw one grey square on every face: every pair scored alike, chance; run 1's pixels did far better.
    assert again["metrics"]["verification_accuracy"] == pytest.approx(0.5, abs=0.02), again["metrics"]
    assert again["metrics"]["auc"] == pytest.approx(0.5, abs=0.02), again["metrics"]
    assert champion.verification_accuracy >= again["metrics"]["verification_accuracy"] + 0.2, (again["metrics"],
                                                                                                champion)
    gate = gate_numbers(again)
    assert gate["deploy"] is False and again["promoted"] is None and again["exported"] is None
    assert gate["champion_accuracy"] == champion.verification_accuracy
    assert "**Keep the champion**" in gate["markdown"] and "(version 1)" in gate["markdown"]
    assert store.versions() == [1] and store.current() == 1

    better = run(faces, pairs, tmp_path, store_dir, **BETTER)
    version, champion = champion_in(better)
    assert version == 1
    # Fitted to the faces it is scored on: far above what run 1's pixels gave.
    assert better["metrics"]["verification_accuracy"] >= champion.verification_accuracy + 0.1, (better["metrics"],
                                                                                                 champion)
    assert gate_numbers(better)["deploy"] is True and better["promoted"] == 2
    assert store.versions() == [1, 2] and store.current() == 2
    lineage = store.lineage(2)
    assert lineage.replaced == 1 and lineage.champion_metrics == champion.to_dict()
    # warm_start (the default): run 3 trained from the champion of its time, and its lineage says so.
    assert trained_from(better)["version"] == 1 and trained_from(better)["store"] == store.folder
    assert lineage.started_from == trained_from(better)
    assert trained_from(first) is None  # the store was empty

    assert pipeline.main(["models", "rollback", "--store", str(store_dir), "--model", "faces"]) == 0
    assert store.current() == 1
    assert pipeline.main(["models", "rollback", "--store", str(store_dir), "--model", "faces", "--version", "2"]) == 0

    before = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if "runs.jsonl" not in p.name)
    with pytest.raises(RuntimeError, match="Inner task failed"):
        run(faces, pairs, tmp_path, store_dir, **{**PEOPLE, "epochs": 1}, pairs_file=str(tmp_path / "no-pairs.txt"))
    after = sorted(p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if "runs.jsonl" not in p.name)
    assert after == before and store.current() == 2

    ends = [r for r in store.runs() if r["kind"] == "run_end"]
    assert [r["state"] for r in ends] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert [r["run_id"] for r in ends[:3]] == [Path(s["run_dir"]).name for s in (first, again, better)]
    # kfp.local names only the exit handler's group; the step's own record names the step and its error.
    assert ends[3]["platform_task"] == "exit-handler-1"
    assert ends[3]["failed_task"] == "evaluate-model" and "no-pairs.txt" in ends[3]["error_message"]
