"""Checkpoints: what one holds (the history with the weights), where they lie, and whether a run may resume."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import tensorflow as tf

from arcface import artifacts
from arcface.config import TrainConfig, load_yaml
from arcface.training import TrainingError

#: Fields that do not change what is trained (where it is written, how the run is driven, where the data lies:
#: the data itself is in the manifest hash); every other field is part of a derived checkpoint key.
RUN_CONTROL_FIELDS = ("save_path", "checkpoint_dir", "checkpoint_key", "resume", "max_minutes", "checkpoint_steps",
                      "train_data", "validation_data", "align_cache")


def checkpoint_key(config: TrainConfig, manifest_sha256: str) -> str:
    """--checkpoint_key, or one derived from the data and the training settings: a rerun of the same command
    resumes, a run on other data or with other settings starts fresh."""
    if config.checkpoint_key:
        return config.checkpoint_key
    settings = {k: v for k, v in config.to_dict().items() if k not in RUN_CONTROL_FIELDS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{manifest_sha256[:16]}-{digest[:16]}"


def ensure_writable(folder: str, flag: str) -> None:
    """Create ``folder`` and write a file into it, so that a volume mounted read-only (or not at all) fails here
    with a message, not at the first checkpoint an epoch later."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrainingError(
            f"{flag}: cannot write checkpoints to {folder} ({e.strerror or e}); mount a writable volume there "
            "(in a cluster: a PVC the pod's user may write, e.g. through the pod's fsGroup), or leave "
            "--checkpoint_dir empty to keep them in save_path") from None



class History(tf.train.experimental.PythonState):
    """One record per finished epoch, saved inside every checkpoint.

    Saved with the weights in one write, a resume restores exactly the epochs those weights went through,
    wherever the previous run was killed: no epoch is lost or counted twice.
    """

    def __init__(self):
        self.records: list[dict[str, Any]] = []

    def serialize(self) -> str:
        return json.dumps(self.records)

    def deserialize(self, string_value) -> None:
        self.records = json.loads(string_value)

    def best_val_accuracy(self) -> float | None:
        return max((h["val_accuracy"] for h in self.records if h.get("val_accuracy") is not None), default=None)



ARCHITECTURE_FIELDS = ("backbone", "n_classes", "image_size", "embedding_size", "margin", "optimizer")


def check_resumable(config: TrainConfig, latest: str | None, saved_config: str, where: str) -> None:
    """A checkpoint is resumed only when asked (--resume), and only by a run of the same architecture."""
    fresh = ("another --checkpoint_key (or an empty --checkpoint_dir)" if config.checkpoint_dir
             else "an empty --save_path")
    if latest and not config.resume:
        raise TrainingError(
            f"{where} already holds a checkpoint ({os.path.basename(latest)}); pass --resume to "
            f"continue it, or choose {fresh} (nothing is overwritten)")
    if latest and os.path.exists(saved_config):
        previous = load_yaml(saved_config)
        changed = [f for f in ARCHITECTURE_FIELDS if getattr(previous, f) != getattr(config, f)]
        if changed:
            raise TrainingError(
                f"the checkpoint in {where} was trained with another "
                + ", ".join(f"{f} ({getattr(previous, f)!r}, now {getattr(config, f)!r})" for f in changed)
                + f"; use {fresh}, or the same values to resume")


def history_from_metadata(output_path: str, epochs_done: int) -> list[dict[str, Any]]:
    """The history of a checkpoint written before the history moved into the checkpoint: metadata.json's."""
    path = os.path.join(output_path, artifacts.METADATA_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [h for h in json.load(f).get("history", []) if h["epoch"] <= epochs_done]



def remove_leftovers_of_killed_runs(checkpoint_dir: str, folders: list[str]) -> list[str]:
    """What a killed run left half-written: checkpoint shards and the temporaries of ``folders``; the paths."""
    # TensorFlow writes a checkpoint's shards into <name>_temp/ before merging them; a kill in between
    # leaves that folder, which no later save removes.
    unfinished = glob.glob(os.path.join(checkpoint_dir, "*_temp"))
    for path in unfinished:
        shutil.rmtree(path, ignore_errors=True)
    stale = [path for folder in folders for path in artifacts.remove_stale_temporaries(folder)]
    return [*unfinished, *stale]
