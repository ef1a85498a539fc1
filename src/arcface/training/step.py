"""One training step: the loss of a global batch, its gradients and the update, on every replica.

Two ways through: every replica holding all class centres (the full softmax, or Partial-FC sampling them on one
device), or Partial-FC with the centres sharded over the replicas (:class:`arcface.models.partial_fc.ShardedPartialFC`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from arcface.models import MarginHead
from arcface.models import partial_fc as pfc
from arcface.training.optimization import weight_decay_loss


class TrainStep:
    """Built from a Trainer's models, optimizer and strategy; :meth:`function` is the compiled step, which
    returns the global batch's cross-entropy, weight decay and count of right answers."""

    def __init__(self, trainer):
        self.config, self.head, self.backbone = trainer.config, trainer.head, trainer.backbone
        self.optimizer, self.strategy, self.replicas = trainer.optimizer, trainer.strategy, trainer.replicas
        self.dense_variables, self.decayed = trainer.dense_variables, trainer.decayed
        self.backbone_positions, self.partial_fc = trainer.backbone_positions, trainer.partial_fc
        self.loss_scaling = trainer.precision.loss_scaling
        self.global_batch = self.config.batch_size
        self.margin_head = isinstance(self.head, MarginHead)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none") if not self.config.label_smoothing else None
        self.sharded = pfc.ShardedPartialFC(self.head, self.config.label_smoothing) if trainer.sharded else None

    def function(self):
        return tf.function(self.step, jit_compile=self.config.jit_compile or None, reduce_retracing=True)

    def step(self, images, labels):
        # Each replica returns its share of the global batch's loss, decay and count of right answers.
        replica_step = self.sharded_step if self.sharded else self.replica_step
        shares = self.strategy.run(replica_step, args=(images, labels))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in shares)

    def cross_entropy(self, labels, logits):
        smoothing = self.config.label_smoothing
        if smoothing:
            n = tf.shape(logits)[-1]
            target = tf.one_hot(labels, n) * (1 - smoothing) + smoothing / tf.cast(n, tf.float32)
            return tf.nn.softmax_cross_entropy_with_logits(target, logits)
        return self.loss_fn(labels, logits)

    def sharded_step(self, images, labels):
        config = self.config
        with tf.GradientTape() as tape:
            features = self.backbone(images, training=True)
            decay = weight_decay_loss(self.decayed, config.decay) / self.replicas  # mirrored: summed below
            out = self.sharded(features, labels)
            decay += 0.5 * config.decay * tf.reduce_sum(tf.square(out.rows))  # this shard's rows only
            # loss_sum is the global batch's, the same on every replica; its gradient reaches each replica's
            # embeddings through the all-gather, so the optimizer's sum over replicas is the whole gradient.
            loss = out.loss_sum / self.global_batch + decay
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        grads = self.adjust_backbone(tape.gradient(scaled, [*self.dense_variables, out.variable]))
        self.update_centers(out.variable, grads.pop())
        self.optimizer.apply(grads, self.dense_variables)
        return out.own_loss_sum / self.global_batch, decay, out.own_correct

    def replica_step(self, images, labels):
        config, head = self.config, self.head
        with tf.GradientTape() as tape:
            features = self.backbone(images, training=True)
            decay = weight_decay_loss(self.decayed, config.decay)
            if self.margin_head:
                logits, targets, predicted, centers_decay = self.margin_logits(features, labels)
                if centers_decay is not None:
                    decay += centers_decay
            else:
                logits, targets = tf.cast(head([features, labels], training=True), tf.float32), labels
                predicted = tf.argmax(logits, -1, output_type=tf.int32)
            correct = tf.equal(predicted, labels)
            ce = tf.reduce_sum(self.cross_entropy(targets, logits)) / self.global_batch
            decay /= self.replicas  # every replica's share: the same decay, summed below
            loss = ce + decay
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        variables = self.dense_variables + ([head.centers.value] if self.partial_fc else [])
        grads = self.adjust_backbone(tape.gradient(scaled, variables))
        if self.partial_fc:
            self.update_centers(head.centers.value, grads.pop())
        self.optimizer.apply(grads, self.dense_variables)
        return ce, decay, tf.reduce_sum(tf.cast(correct, tf.float32))

    def margin_logits(self, features, labels):
        """The margin head's logits, the targets among its (sampled) centres, the predicted identities and the
        decay of the sampled centres (None without sampling)."""
        head, centers, targets, decay = self.head, None, labels, None
        if self.partial_fc:
            index, targets = head.sample_centers(labels)
            centers = tf.gather(head.centers.value, index)  # a sparse read, not all rows
            decay = 0.5 * self.config.decay * tf.reduce_sum(tf.square(centers))
        cos_theta = head.cosine(features, centers)
        logits = head.logits(cos_theta, targets)
        # Accuracy from the cosines: with the margin on the true class it stays 0 long after the embedding has
        # learned to rank the right identity first.
        predicted = tf.argmax(cos_theta, -1, output_type=tf.int32)
        if self.partial_fc:
            predicted = tf.gather(index, predicted)
        return logits, targets, predicted, decay

    def update_centers(self, variable, grad):
        # Plain SGD on the sampled rows only: touching all n_classes rows (momentum, decay) each step would cost as
        # much as the full softmax that Partial-FC exists to avoid.
        if self.loss_scaling:  # the optimizer unscales what it applies; these rows bypass it
            grad = tf.IndexedSlices(grad.values / tf.cast(self.optimizer.dynamic_scale, grad.values.dtype),
                                    grad.indices)
        pfc.sparse_sgd(variable, grad, self.optimizer.learning_rate)

    def adjust_backbone(self, grads: list) -> list:
        """--backbone_clipnorm, then --backbone_lr_scale, on the backbone's gradients alone."""
        if self.config.backbone_clipnorm > 0:
            grads = self.clip_backbone(grads)
        if self.config.backbone_lr_scale != 1:
            grads = self.scale_backbone(grads)
        return grads

    def clip_backbone(self, grads: list) -> list:
        """The reference trainer's clip_grad_norm_(backbone, 5): the backbone's gradients only, so the head's
        (large while the class centres are small, early on) neither counts towards the norm nor is clipped."""
        limit = self.config.backbone_clipnorm
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):  # still scaled here
            limit = limit * tf.cast(self.optimizer.dynamic_scale, tf.float32)
        clipped, _ = tf.clip_by_global_norm([grads[i] for i in self.backbone_positions], limit)
        grads = list(grads)
        for i, g in zip(self.backbone_positions, clipped, strict=True):
            grads[i] = g
        return grads

    def scale_backbone(self, grads: list) -> list:
        """--backbone_lr_scale: with SGD (momentum included) a gradient scaled by k is a learning rate scaled by k,
        for these variables alone."""
        grads = list(grads)
        for i in self.backbone_positions:
            grads[i] = grads[i] * tf.cast(self.config.backbone_lr_scale, grads[i].dtype)
        return grads
