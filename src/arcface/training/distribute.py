"""The strategy of a run and what its workers need of one another: who is the chief, and waiting for all."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import tensorflow as tf

from arcface.training import TrainingError


def pick_strategy() -> tf.distribute.Strategy:
    """Several pods (TF_CONFIG set, e.g. by Kubeflow's training operator), several GPUs, several logical CPU
    devices (only when a program configured them: tf.config.set_logical_device_configuration), or this device.

    A worker that dies is noticed by TensorFlow's coordination service (its heartbeats stop, ~10 s) or by the
    refused connection, and the collective ops of the others abort with UnavailableError (see Trainer.fit). No
    per-collective timeout (CommunicationOptions.timeout_seconds) is set: TensorFlow starts a thread per
    collective for it, and calls it a debugging aid.
    """
    if os.environ.get("TF_CONFIG"):
        return _one_per_process(("workers", os.environ["TF_CONFIG"]), tf.distribute.MultiWorkerMirroredStrategy)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return _one_per_process(("gpus",), tf.distribute.MirroredStrategy)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if not gpus and len(cpus) > 1:
        return _one_per_process(("cpus", *cpus), lambda: tf.distribute.MirroredStrategy(cpus))
    return tf.distribute.get_strategy()


_STRATEGIES: dict[tuple[str, ...], tf.distribute.Strategy] = {}


def _one_per_process(key: tuple[str, ...], make) -> tf.distribute.Strategy:
    # A second strategy over the same devices numbers its collective ops from the start again, and they collide
    # with the first one's ("Shape mismatch in the collective instance 100"): a second run in the same process
    # reuses the first one's strategy.
    if key not in _STRATEGIES:
        _STRATEGIES[key] = make()
    return _STRATEGIES[key]


def collective_error_reason(error: tf.errors.OpError) -> str:
    """The message of a collective op's error, without the name of the function TensorFlow wrapped it in."""
    return re.sub(r"\{\{function_node [^}]*\}\}\s*", "", " ".join(str(error.message).split()))[:400]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes save_path: always, except on the non-chief workers of a multi-worker run."""
    return bool(strategy.extended.should_checkpoint)


def task_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "this process"
    return f"{resolver.task_type} {resolver.task_id}"



def wait_for_every_worker(strategy: tf.distribute.Strategy, until: str) -> None:
    """A collective that every worker joins: none goes on before all got here. There is no timeout: the wait is
    as long as the chief's work; a worker that dies ends it through TensorFlow's coordination service."""
    try:
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1, tf.int64)), axis=None)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as e:
        raise TrainingError(
            f"{task_name(strategy)} lost contact with another training worker while waiting until {until} "
            f"({collective_error_reason(e)}); see the log of the worker that failed (the chief's, if it stopped "
            "while aligning), fix that, and start all the workers again") from None


def tf_config_is_chief() -> bool:
    """What MultiWorkerMirroredStrategy will decide, read from TF_CONFIG before it exists: the chief task, or
    worker 0 where the cluster has no chief; true without TF_CONFIG."""
    try:
        spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = spec.get("task") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return True  # a malformed TF_CONFIG: the strategy reports it
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in (spec.get("cluster") or {})


def check_workers_agree(strategy: tf.distribute.Strategy, step: int, manifest_sha256: str) -> None:
    """Every worker must resume from the same step, or they run different loops and train apart; that is
    what happens when the workers do not see the same checkpoints (a pod-local save_path). And every worker
    must train on the same data: the same manifest hash (the crops, when each aligned its own)."""
    replicas = strategy.num_replicas_in_sync
    digest = np.frombuffer(bytes.fromhex(manifest_sha256), np.uint8).astype(np.int64)
    # The sums of the bytes and of their squares are the replicas' count times this worker's only when every
    # replica holds the same bytes (their variance is then 0).
    mine = np.concatenate([[step], digest, digest ** 2])
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(
        lambda: tf.constant(mine, tf.int64)), axis=None).numpy()
    if int(total[0]) != step * replicas:
        raise TrainingError(
            f"{task_name(strategy)} resumes at global step {step}, but not every worker does (the steps "
            f"of the {replicas} replicas add up to {int(total[0])}, not {step * replicas}): every "
            "worker must read the same checkpoints; set --checkpoint_dir (or --save_path) to a volume that all "
            "workers mount")
    if not np.array_equal(total[1:], mine[1:] * replicas):
        raise TrainingError(
            f"{task_name(strategy)} trains on the manifest {manifest_sha256[:16]}, but not every "
            "worker does: the workers must train on the same images (the same crops when aligning); give them "
            "the same --manifest, or the same data and a --save_path, --checkpoint_dir or --align_cache on a "
            "volume that all mount, so that they take the chief's crops")
