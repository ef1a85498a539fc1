"""The learning-rate schedule, the optimizer's update and the weight decay of the training step."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to the peak rate, then cosine, step (x0.1 at 50/75/90 %), polynomial or constant decay.

    ``time_progress``: a variable the loop sets to the fraction of the --max_minutes budget spent. The schedule
    then runs on the larger of the step fraction and the time fraction, so a run that its budget stops before
    its last step (a slower CPU) has finished its warm-up and its decay all the same.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, kind: str = "cosine",
                 time_progress: tf.Variable | None = None):
        self.peak, self.total_steps, self.warmup_steps, self.kind = float(peak), int(total_steps), int(
            warmup_steps), kind
        self.time_progress = time_progress

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.time_progress is not None:
            # The time fraction as a step: the warm-up and the decay keep their shares of the run.
            step = tf.maximum(step, tf.cast(self.time_progress, tf.float32) * self.total_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "poly":
            decayed = (1.0 - progress) ** 2
        elif self.kind == "step":
            decayed = 0.1 ** (tf.cast(progress >= 0.5, tf.float32) + tf.cast(progress >= 0.75, tf.float32)
                              + tf.cast(progress >= 0.9, tf.float32))
        else:
            decayed = tf.constant(1.0)
        warmup = (step + 1.0) / warm if self.warmup_steps > 0 else tf.constant(1.0)
        return self.peak * tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind}


class MomentumSGD(keras.optimizers.SGD):
    """Keras' SGD with each variable's momentum update in one op (ResourceApplyKerasMomentum: one pass over the
    weights, the momentum and the gradient) instead of Keras' chain of casts, products, a difference and two
    assignments. The same maths and the same variables, so the same checkpoints: ``m = momentum * m - lr * g;
    w += m``. Nesterov, sparse gradients and plain SGD (momentum 0) take Keras' own update."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self.nesterov or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
            use_locking=False, use_nesterov=False)



def decayed_variables(model: keras.Model) -> list[tf.Variable]:
    """Every trainable kernel (conv, depthwise, dense, class centres); biases, BN and PReLU are left alone."""
    names = ("kernel", "centers")
    return [v for v in model.trainable_variables if any(n in v.path.rsplit("/", 1)[-1] for n in names)]


def weight_decay_loss(variables, decay: float) -> tf.Tensor:
    """decay/2 * sum ||W||^2: its gradient is decay*W, the coupled weight decay of SGD in the paper."""
    if decay == 0 or not variables:
        return tf.constant(0.0)
    return 0.5 * decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
