"""Runs the sharded Partial-FC loss, or a training run, on two logical CPU devices and writes what it saw as JSON.

    python -m tests.train.sharded_probe loss OUT.json
    python -m tests.train.sharded_probe train OUT.json MANIFEST SAVE_PATH

A separate process: logical devices are fixed once TensorFlow starts, and would leak into other tests. The
test (test_partial_fc_sharded.py) compares the numbers with a NumPy reference; nothing is asserted here.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
import tensorflow as tf

N_CLASSES, DIM, BATCH, SCALE, MARGIN = 11, 16, 8, 64.0, 0.5  # 11 classes: shards of 6 and 5 rows


def setup() -> tf.distribute.MirroredStrategy:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def sharded_head(strategy, n_classes, dim, sample_rate, seed=0):
    from arcface.models import MarginHead
    from arcface.models.partial_fc import sharded_centers

    # Centres of norm ~4, not the training init's ~0.04: their gradient scales with 1/norm, and at ~100 float32
    # keeps only ~1e-5 of it.
    centers = sharded_centers(n_classes, dim, strategy.extended.worker_devices, seed, stddev=1.0)
    head = MarginHead(n_classes, scale=SCALE, m2=MARGIN, sample_rate=sample_rate, sharded_centers=centers)
    head.build([(None, dim), (None,)])
    return head


_STEPS: dict[tuple[int, float], tf.types.experimental.PolymorphicFunction] = {}


def sharded_step(strategy, head, x, labels, label_smoothing=0.0):
    """Loss and gradients (embeddings, every shard) of one sharded step, and the classes each shard sampled."""
    from arcface.models.partial_fc import ShardedPartialFC

    half = len(x) // 2
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: (tf.constant(x[ctx.replica_id_in_sync_group * half:][:half]),
                     tf.constant(labels[ctx.replica_id_in_sync_group * half:][:half])))
    if (id(head), label_smoothing) not in _STEPS:
        pfc = ShardedPartialFC(head, label_smoothing)

        def replica(inputs):
            features, own = inputs
            with tf.GradientTape() as tape:
                tape.watch(features)
                out = pfc(features, own)
                loss = out.loss_sum / tf.cast(2 * tf.shape(features)[0], tf.float32)
            grad_x, grad_w = tape.gradient(loss, [features, out.variable])
            return (loss, grad_x, tf.convert_to_tensor(grad_w), out.index + out.start, out.own_loss_sum,
                    out.own_correct)

        _STEPS[id(head), label_smoothing] = tf.function(lambda v: strategy.run(replica, args=(v,)))
    results = _STEPS[id(head), label_smoothing](per_replica)
    loss, grad_x, grad_w, sampled, own_loss, own_correct = (
        [t.numpy().tolist() for t in strategy.experimental_local_results(r)] for r in results)
    return {"loss": loss, "grad_x": sum(grad_x, []), "grad_w": sum(grad_w, []), "sampled": sampled,
            "own_loss_sum": own_loss, "own_correct": own_correct}


def single_device(head_centers, x, labels):
    """Today's path on one device: the full softmax of an unsharded MarginHead, same centres."""
    from arcface.models import MarginHead

    with tf.device("/CPU:0"):
        head = MarginHead(N_CLASSES, scale=SCALE, m2=MARGIN)
        head.build([(None, DIM), (None,)])
        head.centers.assign(head_centers)
        features = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = head.logits(head.cosine(features), tf.constant(labels))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(labels), logits))
        grad_x, grad_w = tape.gradient(loss, [features, head.centers.value])
    return {"loss": float(loss), "grad_x": grad_x.numpy().tolist(), "grad_w": grad_w.numpy().tolist()}


def variable_bytes_by_device(strategy, variables) -> dict[str, int]:
    """Bytes of every variable's copies, per device they live on (a mirrored variable has one per replica)."""
    held: dict[str, int] = {}
    for variable in variables:
        value = variable.value if isinstance(variable, keras.Variable) else variable  # Keras wraps TensorFlow's
        for copy in strategy.experimental_local_results(value):
            held[copy.device] = held.get(copy.device, 0) + copy.shape.num_elements() * copy.dtype.size
    return held


def memory(strategy, n_classes=10_000, dim=64) -> dict:
    """The centres each replica holds: a mirrored head (today, full softmax) against a sharded one."""
    from arcface.models import MarginHead

    with strategy.scope():
        mirrored = MarginHead(n_classes)
        mirrored.build([(None, dim), (None,)])
    sharded = sharded_head(strategy, n_classes, dim, 0.1)
    return {"n_classes": n_classes, "dim": dim,
            "mirrored": variable_bytes_by_device(strategy, [mirrored.centers]),
            "sharded": variable_bytes_by_device(strategy, sharded.centers.variables)}


def trainer_bytes(trainer) -> dict[str, dict[str, int]]:
    """Bytes per device of the centres, and of all variables (model, centre shards, optimizer), of a Trainer."""
    head = trainer.head
    centers = head.centers.variables if head.sharded else [head.centers]
    everything = [*trainer.training_model.variables, *trainer.optimizer.variables,
                  *(head.centers.variables if head.sharded else [])]
    return {"centers": variable_bytes_by_device(trainer.strategy, centers),
            "all": variable_bytes_by_device(trainer.strategy, everything)}


def train(out: str, manifest_path: str, save_path: str) -> None:
    """A short run at sample_rate 0.5, its resumption, and the bytes each replica holds against sample_rate 1."""
    from arcface.data import Manifest
    from arcface.train import Trainer, pick_strategy
    from arcface.train import train as run
    from tests.train.conftest import tiny_config

    strategy = setup()
    assert pick_strategy().num_replicas_in_sync == 2
    manifest = Manifest.read(manifest_path)
    settings = dict(sample_rate=0.5, epochs=6, lr=0.1, steps_per_epoch=3, embedding_size=16)
    first = run(tiny_config(save_path, **settings), manifest, verbose=1)
    resumed = run(tiny_config(save_path, **{**settings, "epochs": 7}), manifest, verbose=1)
    # A mixed policy saves float32 copies of the models, layer by layer: the sharded head's too.
    mixed = run(tiny_config(f"{save_path}-mixed", **{**settings, "epochs": 1, "precision": "mixed_bfloat16"}),
                manifest, verbose=0)
    memory = {rate: trainer_bytes(Trainer(tiny_config(f"{save_path}-{rate}", **{**settings, "sample_rate": rate}),
                                          manifest, verbose=0)) for rate in (0.5, 1.0)}
    result = {"replicas": strategy.num_replicas_in_sync, "history": first.history, "resumed": resumed.history,
              "resumed_steps": resumed.steps, "mixed": mixed.history, "memory": memory}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)


def loss(out: str) -> None:
    strategy = setup()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, BATCH).astype(np.int32)
    labels[:2] = [0, N_CLASSES - 1]  # both shards hold a positive
    result = {"x": x.tolist(), "labels": labels.tolist(), "scale": SCALE, "margin": MARGIN}
    head = sharded_head(strategy, N_CLASSES, DIM, 1.0)
    result["centers"] = head.centers.numpy().tolist()
    result["full"] = sharded_step(strategy, head, x, labels)
    result["single"] = single_device(head.centers.numpy(), x, labels)
    result["smoothed"] = sharded_step(strategy, head, x, labels, label_smoothing=0.2)
    head = sharded_head(strategy, N_CLASSES, DIM, 0.3, seed=1)
    result["sampled_centers"] = head.centers.numpy().tolist()
    result["sampled"] = [sharded_step(strategy, head, x, labels) for _ in range(5)]
    # Many classes, few sampled: the positives must be there every time.
    big = sharded_head(strategy, 1001, 8, 0.002)
    many = rng.integers(0, 1001, 32).astype(np.int32)
    result["positives"] = {"labels": many.tolist(), "sampled": [
        sharded_step(strategy, big, rng.normal(size=(32, 8)).astype(np.float32), many)["sampled"]
        for _ in range(3)]}
    result["memory"] = memory(strategy)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    {"loss": loss, "train": train}[sys.argv[1]](*sys.argv[2:])
