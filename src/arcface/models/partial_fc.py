"""Partial-FC across replicas (model parallel), as insightface's arcface_torch ``partial_fc_v2.py`` does it.

The class centres are split by rows: replica r of R holds classes [start_r, start_r + rows_r), the first
``C % R`` replicas one row more, so each holds about C/R rows. A step (in replica context):

1. all-gathers the embeddings and labels, so every shard sees the global batch;
2. samples, per shard, the positives (labels that fall in the shard) plus ``sample_rate * rows_r`` negatives;
3. computes the cosines of the global batch against its sampled rows, with the margin on the true class where
   that class lives;
4. takes the softmax normaliser from the all-reduced max and sum of exp (a distributed log-softmax), so the loss
   is the cross-entropy of the global batch over all shards' sampled classes.

Gradients: the loss of each shard is differentiated only through that shard's logits (``distributed_cross_entropy``
gives d(global loss)/d(local logits) = softmax - target), and the all-gather's gradient sums what the shards
send back to each replica's own slice of the embeddings (TensorFlow's all_gather gradient is an all-reduce SUM
and a slice). The centre update stays sparse: only the rows a shard used.

Storage: every shard is a plain ``tf.Variable`` on its replica's device, created outside the strategy's scope
(inside it, MirroredStrategy would mirror it: the whole matrix on every device), and the shards form one
``ShardedVariable`` (TensorFlow's row-partitioned variable, ``tf.__internal__.distribute.ShardedVariable``),
which saves as slices of a single [C, D] tensor: a checkpoint holds all centres under the key an unsharded head
uses, and restores into any number of shards (one device included). The strategy's own variables do not fit:
MirroredStrategy gives every replica all rows of a variable made in its scope, and its per-replica kind
(synchronization=ON_READ) refuses scatter updates ("doesn't support scatter_sub") and checkpoints a single
aggregated copy. Keras does not see the shards as a weight; MarginHead's get/set_weights and
save/load_own_variables give and take the whole matrix instead, so a saved head is an ordinary one.

Several workers (MultiWorkerMirroredStrategy) are not supported: each worker holds only its own devices' shards,
and the chief's checkpoint would lack the others' rows (arcface_torch writes one file per rank instead).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

ShardedVariable = tf.__internal__.distribute.ShardedVariable


def shard_bounds(n_classes: int, shards: int) -> list[tuple[int, int]]:
    """(start, rows) of each shard: arcface_torch's split, the first ``n_classes % shards`` get one row more."""
    base, extra = divmod(int(n_classes), int(shards))
    return [(base * r + min(r, extra), base + int(r < extra)) for r in range(shards)]


def sharded_centers(n_classes: int, dim: int, devices, seed: int = 0, stddev: float = 0.01) -> ShardedVariable:
    """One ``tf.Variable`` of the centre rows per device, each initialised where it lives (no [C, D] matrix is
    ever made). Call it outside ``strategy.scope()``."""
    if tf.distribute.has_strategy():
        raise RuntimeError("create the centre shards outside strategy.scope(): inside it they would be mirrored")
    shards = []
    for r, ((_, rows), device) in enumerate(zip(shard_bounds(n_classes, len(devices)), devices, strict=True)):
        with tf.device(device):
            value = tf.random.stateless_normal([rows, dim], seed=[seed, r], stddev=stddev)
            shards.append(tf.Variable(value, name=f"centers/part_{r}"))
    return ShardedVariable(shards, name="centers")


def assign_full(centers: ShardedVariable, full) -> None:
    """Write a whole [C, D] matrix into the shards (a head loaded from a file, an --use_param_folder start)."""
    if tuple(full.shape) != tuple(centers.shape):
        raise ValueError(f"centres of shape {tuple(full.shape)} do not fit {tuple(centers.shape)}")
    start = 0
    for variable in centers.variables:
        rows = int(variable.shape[0])
        variable.assign(full[start:start + rows])
        start += rows


def sample_shard(labels: tf.Tensor, start: int, rows: int, sample_rate: float):
    """The rows of one shard a step uses: its positives plus about ``sample_rate * rows`` random others.

    Returns (index: the sampled rows of the shard, targets: for every label, its position in ``index``, or -1
    when the class lives in another shard). As the single-device head does, negatives are drawn with
    replacement and de-duplicated (work proportional to the sample, not to the shard); at sample_rate 1 the
    shard is used whole.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    local = labels - start
    mine = tf.logical_and(local >= 0, local < rows)
    num_sample = max(1, int(math.ceil(sample_rate * rows)))
    if num_sample >= rows:
        return tf.range(rows, dtype=tf.int32), tf.where(mine, local, -1)
    positives = tf.boolean_mask(local, mine)
    negatives = tf.random.uniform([num_sample], maxval=rows, dtype=tf.int32)
    index, position = tf.unique(tf.concat([positives, negatives], axis=0))
    targets = tf.tensor_scatter_nd_update(tf.fill(tf.shape(labels), -1), tf.where(mine),
                                          position[: tf.size(positives)])
    return index, targets


def _all_max(ctx, value: tf.Tensor) -> tf.Tensor:
    # ReduceOp has only SUM and MEAN: a max across replicas is a gather and a local max.
    return tf.reduce_max(ctx.all_gather(value[None], axis=0), axis=0)


def distributed_cross_entropy(logits: tf.Tensor, targets: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-example softmax cross-entropy over the classes of every shard; call in replica context.

    ``logits``: [B, this shard's sampled classes]; ``targets``: the true class's column, -1 where it lives in
    another shard. Every replica returns the same [B] losses. The gradient is d(loss)/d(this shard's logits),
    softmax - target, and nothing else: the other shards' logits are theirs to differentiate, so adding the
    replicas' gradients does not count a term twice (arcface_torch's DistCrossEntropyFunc).
    """
    ctx = tf.distribute.get_replica_context()
    total_classes = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(logits)[-1], tf.float32))

    @tf.custom_gradient
    def cross_entropy(logits):
        logits = tf.cast(logits, tf.float32)
        peak = tf.stop_gradient(_all_max(ctx, tf.reduce_max(logits, axis=-1)))
        exp = tf.exp(logits - peak[:, None])
        norm = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(exp, axis=-1))
        one_hot = tf.one_hot(targets, tf.shape(logits)[-1], dtype=tf.float32)  # a row of 0s for -1
        target = (1.0 - label_smoothing) * one_hot + label_smoothing / total_classes
        # sum_j t_j z_j over all shards: with smoothing every class has a share, not only the true one
        target_logit = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(target * logits, axis=-1))
        loss = tf.math.log(norm) + peak - target_logit

        def grad(upstream):
            return upstream[:, None] * (exp / norm[:, None] - target)

        return loss, grad

    return cross_entropy(logits)


class ShardStep(NamedTuple):
    loss_sum: tf.Tensor  # sum of the global batch's losses, the same on every replica: what to differentiate
    own_loss_sum: tf.Tensor  # the part of it from this replica's own examples (adds up to loss_sum)
    own_correct: tf.Tensor  # this replica's examples whose true class has the highest cosine of the sample
    rows: tf.Tensor  # the sampled centre rows (for their weight decay)
    variable: tf.Variable  # this replica's shard
    index: tf.Tensor  # the sampled rows, numbered within the shard
    start: int  # the shard's first class


class ShardedPartialFC:
    """The sharded margin loss of a :class:`MarginHead` whose ``centers`` is a ShardedVariable (see
    ``sharded_centers``), one shard per replica in the order of the strategy's devices.

    Call it inside ``strategy.run`` with this replica's embeddings and labels; differentiate ``loss_sum`` with
    respect to the embeddings (through the all-gather) and ``variable`` (an IndexedSlices of the sampled rows).
    """

    def __init__(self, head, label_smoothing: float = 0.0):
        if not isinstance(head.centers, ShardedVariable):
            raise TypeError("the head's centres are not sharded; build it with sharded_centers=")
        self.head = head
        self.label_smoothing = float(label_smoothing)
        self.shards = list(head.centers.variables)
        self.bounds = shard_bounds(head.n_classes, len(self.shards))

    def __call__(self, embeddings: tf.Tensor, labels: tf.Tensor) -> ShardStep:
        ctx = tf.distribute.get_replica_context()
        shard = tf.get_static_value(ctx.replica_id_in_sync_group)
        if ctx.num_replicas_in_sync != len(self.shards) or shard is None:
            raise RuntimeError(f"{len(self.shards)} centre shards for {ctx.num_replicas_in_sync} replicas; call "
                               "this inside strategy.run of the strategy whose devices hold the shards")
        variable, (start, rows) = self.shards[shard], self.bounds[shard]
        own = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        x = ctx.all_gather(tf.cast(embeddings, tf.float32), axis=0)
        y = ctx.all_gather(own, axis=0)
        index, targets = sample_shard(y, start, rows, self.head.sample_rate)
        sampled = tf.gather(variable, index)  # a sparse read: the gradient is an IndexedSlices
        cos_theta = self.head.cosine(x, sampled)
        per_example = distributed_cross_entropy(self.head.logits(cos_theta, targets), targets, self.label_smoothing)
        # Right when the true class's cosine beats every sampled class of every shard (itself included).
        true_cos = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(
            tf.one_hot(targets, tf.shape(cos_theta)[-1]) * cos_theta, axis=-1))
        correct = tf.cast(true_cos >= _all_max(ctx, tf.reduce_max(cos_theta, axis=-1)), tf.float32)
        sizes = ctx.all_gather(tf.shape(own), axis=0)
        begin = tf.reduce_sum(sizes[:shard])
        mine = tf.range(begin, begin + tf.size(own))
        return ShardStep(tf.reduce_sum(per_example), tf.reduce_sum(tf.gather(per_example, mine)),
                         tf.reduce_sum(tf.gather(correct, mine)), sampled, variable, index, start)


def sparse_sgd(variable: tf.Variable, grad: tf.IndexedSlices, lr) -> None:
    """Plain SGD on the rows a step used: momentum or decay over all rows would cost what sampling saves."""
    variable.scatter_sub(tf.IndexedSlices(tf.cast(lr, grad.values.dtype) * grad.values, grad.indices))
