"""The training step: ArcFace on a validated manifest, with checkpoints that survive a kill.

The loop is written out (rather than ``Model.fit``) because four things need the step itself: Partial-FC's
sparse update of the sampled class centres, checkpoints at any step that resume at that step, the NaN guard
that keeps the last good checkpoint, and a wall-clock budget that stops between two steps.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from arcface import __version__, artifacts, atomic, precision, warm_start
from arcface.config import TrainConfig
from arcface.contracts import AlignedDir, ModelDir
from arcface.data import make_dataset
from arcface.models import MarginHead, build_models, fast_training
from arcface.models import partial_fc as pfc

log = logging.getLogger("arcface.train")


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


@dataclasses.dataclass
class TrainResult:
    save_path: str
    epochs_completed: int
    steps: int
    stopped: str  # "completed", "budget" or "nothing-to-do"
    history: list[dict[str, float]]
    best_val_accuracy: float | None
    manifest_sha256: str
    images_per_second: float


# ---------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------
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


def make_optimizer(config: TrainConfig, total_steps: int, steps_per_epoch: int,
                   loss_scaling: bool = False, time_progress: tf.Variable | None = None) -> keras.optimizers.Optimizer:
    """The optimizer of ``config``; ``loss_scaling`` (float16 only, never bfloat16) wraps it in a
    LossScaleOptimizer; ``time_progress``: see :class:`WarmupSchedule`."""
    schedule = WarmupSchedule(config.lr, total_steps, int(round(config.warmup_epochs * steps_per_epoch)),
                              config.schedule, time_progress)
    clip = {"global_clipnorm": config.clipnorm} if config.clipnorm > 0 else {}
    if config.optimizer == "SGD":
        optimizer = (MomentumSGD if FUSED_SGD else keras.optimizers.SGD)(schedule, momentum=config.momentum, **clip)
    else:
        optimizer = keras.optimizers.Adam(schedule, **clip)
    if loss_scaling:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


#: Tuning of the training step (issue #20; measured in benchmarks/results/train_step_tuning_cpu.json).
#: FUSED_BATCH_NORM: the BatchNormalization layers train through FusedBatchNormV3 (arcface.models.fast_training),
#: the same maths in one op each way instead of Keras' float32 chains; on CPUs only, where it was measured (a
#: GPU run keeps Keras' kernels). FAST_PRELU: the PReLU layers compute through fast_training.fast_prelu, its
#: gradient written out (CPU only as well). FUSED_SGD: SGD with momentum updates each variable in one op
#: (MomentumSGD), on every device. ``bench_train.py --untuned`` turns every switch of TUNING off.
FUSED_BATCH_NORM = True
FAST_PRELU = True
FUSED_SGD = True
TUNING = ("FUSED_BATCH_NORM", "FAST_PRELU", "FUSED_SGD")


def decayed_variables(model: keras.Model) -> list[tf.Variable]:
    """Every trainable kernel (conv, depthwise, dense, class centres); biases, BN and PReLU are left alone."""
    names = ("kernel", "centers")
    return [v for v in model.trainable_variables if any(n in v.path.rsplit("/", 1)[-1] for n in names)]


def weight_decay_loss(variables, decay: float) -> tf.Tensor:
    """decay/2 * sum ||W||^2: its gradient is decay*W, the coupled weight decay of SGD in the paper."""
    if decay == 0 or not variables:
        return tf.constant(0.0)
    return 0.5 * decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])


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


# ---------------------------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------------------------
TRAINING_CSV = "training.csv"  # under artifacts.LOG_DIR


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


class Budget:
    """The wall-clock budget of --max_minutes, counted from the start of the run."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60 if minutes > 0 else math.inf
        self.start = time.monotonic()

    def spent(self) -> bool:
        return time.monotonic() - self.start > self.seconds

    def fraction(self) -> float:
        """The share of the budget spent, in [0, 1]; 0 without a budget."""
        return min(1.0, (time.monotonic() - self.start) / self.seconds) if math.isfinite(self.seconds) else 0.0


class Throughput:
    """Images per second of the training steps alone (data loading, validation and saving left out)."""

    def __init__(self):
        self.images, self.seconds = 0, 0.0

    def add(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


class EpochMeter:
    """The sums over one epoch's steps: the progress bar while it runs, the history record at its end."""

    def __init__(self, steps_per_epoch: int, verbose: int):
        self.bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "accuracy", "img/s"],
                                       verbose=1 if verbose else 0)
        self.ce = self.decay = self.correct = 0.0
        self.steps = self.images = 0
        self.start = time.monotonic()

    def add(self, step: int, ce: float, decay: float, correct: float, images: int, rate: float) -> None:
        self.ce, self.decay, self.correct = self.ce + ce, self.decay + decay, self.correct + correct
        self.steps, self.images = self.steps + 1, self.images + images
        self.bar.update(step + 1, [("loss", self.ce / self.steps + decay),
                                   ("accuracy", self.correct / self.images), ("img/s", rate)])

    def record(self, epoch: int, val_accuracy: float | None, lr: float) -> dict[str, Any]:
        steps = max(1, self.steps)
        return {"epoch": epoch, "loss": self.ce / steps + self.decay / steps, "cross_entropy": self.ce / steps,
                "accuracy": self.correct / max(1, self.images), "val_accuracy": val_accuracy, "lr": lr,
                "images_per_second": self.images / max(time.monotonic() - self.start, 1e-9)}


def write_training_csv(path: str, history: list[dict[str, Any]]) -> None:
    """The whole history, rewritten atomically: a row appended per epoch would double after a resume."""
    if not history:
        return
    with atomic.replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


class EpochLog:
    """logs/: training.csv and TensorBoard events, through one event writer for the whole run."""

    def __init__(self, folder: str):
        self.folder = folder

    def __enter__(self) -> EpochLog:
        self.writer = tf.summary.create_file_writer(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()

    def add(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        write_training_csv(os.path.join(self.folder, TRAINING_CSV), history)
        # The TensorBoard package is not a TensorFlow dependency any more; the core op writes the same
        # events, tagged for the scalars plugin, so `tensorboard --logdir` draws them.
        from tensorflow.core.framework import summary_pb2

        scalar = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        with self.writer.as_default():
            for key, value in record.items():
                if key != "epoch" and value is not None:
                    tf.summary.write(key, tf.constant(float(value)), step=record["epoch"], metadata=scalar)
        self.writer.flush()


# ---------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------
ARCHITECTURE_FIELDS = ("backbone", "n_classes", "image_size", "embedding_size", "margin", "optimizer")


class Trainer:
    def __init__(self, config: TrainConfig, manifest, *, verbose: int = 1, make_dataset=make_dataset,
                 strategy: tf.distribute.Strategy | None = None,
                 starting_point: warm_start.StartingPoint | None = None):
        """``make_dataset`` builds the batches of a split (``arcface.data.make_dataset``'s signature);
        ``strategy``: the one :func:`pick_strategy` gave (by default, asked here); ``starting_point``: the
        resolved ``--init_from`` (by default, resolved here; ``champion`` needs :func:`train`'s model_store)."""
        self.config = config.validate()
        self.starting_point = (starting_point if starting_point is not None
                               else warm_start.resolve(self.config.init_from))
        self.manifest = manifest
        self.verbose = verbose
        self.make_dataset = make_dataset
        self.output_path = os.path.abspath(config.save_path)
        self.n_train = len(manifest.split("train"))
        self.class_names = list(manifest.class_names)
        if len(self.class_names) != config.n_classes:
            raise TrainingError(
                f"--n_classes={config.n_classes} but the training data holds {len(self.class_names)} identities; "
                f"pass --n_classes={len(self.class_names)} or add/remove identity folders")
        self.strategy = strategy if strategy is not None else pick_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        # Partial-FC on several replicas shards the class centres (arcface.models.partial_fc).
        self.sharded = config.sample_rate < 1 and self.replicas > 1 and config.margin != "softmax"
        if self.sharded and self.multi_worker:
            raise TrainingError(
                "--sample_rate < 1 (Partial-FC) shards the class centres over the replicas of one machine; with "
                "several workers the chief's checkpoint would hold only its own workers' rows. Use "
                "--sample_rate=1.0 with several workers, or one worker with several devices")
        if config.batch_size % self.replicas:
            raise TrainingError(f"--batch_size={config.batch_size} must be a multiple of the {self.replicas} "
                                "replicas so that every device gets the same share")
        if self.n_train < 1:
            raise TrainingError("the manifest holds no training images")
        self.drop_remainder = self.n_train >= config.batch_size
        self.steps_per_epoch = max(1, self.n_train // config.batch_size if self.drop_remainder else 1)
        if config.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        self.total_steps = self.steps_per_epoch * config.epochs

        self._set_paths()

        # The policy is global in Keras: set it every time, so one mixed-precision run does not leak into the next.
        self.precision = precision.choose(config.requested_precision, precision.local_devices(), config.backbone)
        keras.mixed_precision.set_global_policy(self.precision.policy)
        log.info("precision: %s (%s)", self.precision.policy, self.precision.reason)
        keras.utils.set_random_seed(config.seed)
        # Outside the scope, or MirroredStrategy would give every replica all of them.
        centers = pfc.sharded_centers(config.n_classes, config.embedding_size, self.strategy.extended.worker_devices,
                                      seed=config.seed) if self.sharded else None
        with self.strategy.scope():
            self.training_model, self.embedding_model = build_models(config, sharded_centers=centers)
            if self.replicas > 1 and config.sync_batchnorm:
                # Statistics over the global batch, as one device computes them: with per-replica statistics the
                # replicas normalize by those of batch_size / replicas images, and train another model.
                for layer in fast_training.batch_norm_layers(self.training_model):
                    layer.synchronized = True
            if not tf.config.list_logical_devices("GPU"):
                fast_training.install(self.training_model, batch_norm=FUSED_BATCH_NORM, prelu=FAST_PRELU)
            self.backbone = self.training_model.get_layer(config.backbone)
            self.head = self.training_model.get_layer("head")
            # The share of the schedule the --max_minutes budget has run through (WarmupSchedule), checkpointed
            # so that a resumed run goes on from where its schedule was.
            self.time_progress = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="time_progress")
            self.optimizer = make_optimizer(config, self.total_steps, self.steps_per_epoch,
                                            loss_scaling=self.precision.loss_scaling,
                                            time_progress=self.time_progress if config.max_minutes > 0 else None)
            self.partial_fc = isinstance(self.head, MarginHead) and config.sample_rate < 1
            self.dense_variables = [v for v in self.training_model.trainable_variables
                                    if not (self.partial_fc and v is self.head.centers)]
            self.optimizer.build(self.dense_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.decayed = [v for v in decayed_variables(self.training_model)
                        if not (self.partial_fc and v is self.head.centers)]
        in_backbone = {id(v) for v in self.backbone.trainable_variables}
        self.backbone_positions = [i for i, v in enumerate(self.dense_variables) if id(v) in in_backbone]
        self.history = History()
        self.progress_at_start = 0.0
        self.checkpoint = tf.train.Checkpoint(model=self.training_model, optimizer=self.optimizer,
                                              epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                                              history=self.history, time_progress=self.time_progress)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_write_dir, max_to_keep=2)
        self._train_step = self._make_train_step()

    def _set_paths(self) -> None:
        """Where this process reads and writes.

        ``output_path`` is --save_path; ``save_path`` is where this process writes its models and logs: the same,
        except on a non-chief worker of a multi-worker run, which writes into a scratch folder removed at the end
        (every worker must take part in each save, since saving reads distributed variables, but only the
        chief's copy is kept). ``checkpoint_dir`` is where every worker reads the checkpoint to resume from:
        <save_path>/checkpoints, or <--checkpoint_dir>/<key>/, which outlives save_path (a retried pipeline step
        gets a new, empty output folder); only the chief writes it.
        """
        config = self.config
        self.chief = is_chief(self.strategy)
        self.scratch = None
        self.save_path = self.output_path
        if not self.chief:
            self.scratch = os.path.join(tempfile.gettempdir(), f"arcface-{task_name(self.strategy).replace(' ', '')}"
                                        f"-{os.getpid()}")
            self.save_path = self.scratch
        if config.checkpoint_dir:
            self.checkpoint_key = checkpoint_key(config, self.manifest.sha256)
            self.checkpoint_dir = os.path.join(os.path.abspath(config.checkpoint_dir), self.checkpoint_key)
            # The config of the run whose checkpoints these are, checked on resume; and best/, which must
            # survive a retry as the checkpoints do.
            self.run_folder = self.checkpoint_dir
            if self.chief:
                ensure_writable(self.checkpoint_dir, f"--checkpoint_dir={config.checkpoint_dir}")
        else:
            self.checkpoint_key = None
            self.checkpoint_dir = os.path.join(self.output_path, artifacts.CHECKPOINT_DIR)
            self.run_folder = self.output_path
        self.checkpoint_write_dir = (self.checkpoint_dir if self.chief
                                     else os.path.join(self.save_path, artifacts.CHECKPOINT_DIR))
        self.best_dir = os.path.join(self.run_folder if self.chief else self.save_path, artifacts.BEST_DIR)

    # -- the step ------------------------------------------------------------------------------------------
    def _make_train_step(self):
        config, head = self.config, self.head
        loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none") if not config.label_smoothing else None
        global_batch = config.batch_size

        def cross_entropy(labels, logits):
            if config.label_smoothing:
                n = tf.shape(logits)[-1]
                target = tf.one_hot(labels, n) * (1 - config.label_smoothing) + config.label_smoothing / tf.cast(
                    n, tf.float32)
                return tf.nn.softmax_cross_entropy_with_logits(target, logits)
            return loss_fn(labels, logits)

        margin_head = isinstance(head, MarginHead)
        loss_scaling = self.precision.loss_scaling
        sharded = pfc.ShardedPartialFC(head, config.label_smoothing) if self.sharded else None

        def update_centers(variable, grad):
            # Plain SGD on the sampled rows only: touching all n_classes rows (momentum, decay) each step
            # would cost as much as the full softmax that Partial-FC exists to avoid.
            if loss_scaling:  # the optimizer unscales what it applies; these rows bypass it
                grad = tf.IndexedSlices(grad.values / tf.cast(self.optimizer.dynamic_scale, grad.values.dtype),
                                        grad.indices)
            pfc.sparse_sgd(variable, grad, self.optimizer.learning_rate)

        def sharded_step(images, labels):
            with tf.GradientTape() as tape:
                features = self.backbone(images, training=True)
                decay = weight_decay_loss(self.decayed, config.decay) / self.replicas  # mirrored: summed below
                out = sharded(features, labels)
                decay += 0.5 * config.decay * tf.reduce_sum(tf.square(out.rows))  # this shard's rows only
                # loss_sum is the global batch's, the same on every replica; its gradient reaches each replica's
                # embeddings through the all-gather, so the optimizer's sum over replicas is the whole gradient.
                loss = out.loss_sum / global_batch + decay
                scaled = self.optimizer.scale_loss(loss) if loss_scaling else loss
            grads = tape.gradient(scaled, [*self.dense_variables, out.variable])
            if config.backbone_clipnorm > 0:
                grads = self._clip_backbone(grads)
            if config.backbone_lr_scale != 1:
                grads = self._scale_backbone(grads)
            update_centers(out.variable, grads.pop())
            self.optimizer.apply(grads, self.dense_variables)
            return out.own_loss_sum / global_batch, decay, out.own_correct

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                features = self.backbone(images, training=True)
                decay = weight_decay_loss(self.decayed, config.decay)
                targets = labels
                if margin_head:
                    centers = None
                    if self.partial_fc:
                        index, targets = head.sample_centers(labels)
                        centers = tf.gather(head.centers.value, index)  # a sparse read, not all rows
                        decay += 0.5 * config.decay * tf.reduce_sum(tf.square(centers))
                    cos_theta = head.cosine(features, centers)
                    logits = head.logits(cos_theta, targets)
                    # Accuracy from the cosines: with the margin on the true class it stays 0 long after the
                    # embedding has learned to rank the right identity first.
                    predicted = tf.argmax(cos_theta, -1, output_type=tf.int32)
                    if self.partial_fc:
                        predicted = tf.gather(index, predicted)
                else:
                    logits = tf.cast(head([features, labels], training=True), tf.float32)
                    predicted = tf.argmax(logits, -1, output_type=tf.int32)
                correct = tf.equal(predicted, labels)
                per_example = cross_entropy(targets, logits)
                ce = tf.reduce_sum(per_example) / global_batch
                decay /= self.replicas  # every replica's share: the same decay, summed below
                loss = ce + decay
                scaled = self.optimizer.scale_loss(loss) if loss_scaling else loss
            variables = self.dense_variables + ([head.centers.value] if self.partial_fc else [])
            grads = tape.gradient(scaled, variables)
            if config.backbone_clipnorm > 0:
                grads = self._clip_backbone(grads)
            if config.backbone_lr_scale != 1:
                grads = self._scale_backbone(grads)
            if self.partial_fc:
                update_centers(head.centers.value, grads.pop())
            self.optimizer.apply(grads, self.dense_variables)
            return ce, decay, tf.reduce_sum(tf.cast(correct, tf.float32))

        def step(images, labels):
            # Each replica returns its share of the global batch's loss, decay and count of right answers.
            shares = self.strategy.run(sharded_step if sharded else replica_step, args=(images, labels))
            return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in shares)

        return tf.function(step, jit_compile=config.jit_compile or None, reduce_retracing=True)

    def _clip_backbone(self, grads: list) -> list:
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

    def _scale_backbone(self, grads: list) -> list:
        """--backbone_lr_scale: with SGD (momentum included) a gradient scaled by k is a learning rate scaled by k,
        for these variables alone."""
        grads = list(grads)
        for i in self.backbone_positions:
            grads[i] = grads[i] * tf.cast(self.config.backbone_lr_scale, grads[i].dtype)
        return grads

    # -- evaluation during training ------------------------------------------------------------------------
    def validation_accuracy(self) -> float | None:
        # The validation step keeps only identities that are also trained on, so every row has a label.
        if not self.manifest.split("validation"):
            return None
        dataset = self.make_dataset(self.manifest, "validation", image_size=self.config.image_size,
                                    batch_size=max(self.config.batch_size, 32), training=False,
                                    center_crop=self.config.center_crop)
        correct = total = 0
        for images, labels in dataset:
            features = self.backbone(images, training=False)
            logits = self.head(features) if isinstance(self.head, MarginHead) else self.head([features, labels])
            correct += int(tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == labels, tf.int32)))
            total += int(labels.shape[0])
        return correct / total if total else None

    # -- saving --------------------------------------------------------------------------------------------
    def metadata(self, **extra) -> dict[str, Any]:
        return {
            "package_version": __version__, "framework": f"tensorflow {tf.__version__} / keras {keras.__version__}",
            "class_names": self.class_names, "manifest_sha256": self.manifest.sha256,
            "image_size": self.config.image_size, "embedding_size": self.config.embedding_size,
            "normalization": artifacts.NORMALIZATION, "center_crop": self.config.center_crop,
            "backbone": self.config.backbone, "margin": self.config.margin,
            # what the model was trained on (from the manifest, not the config): every entrance aligns the same way
            "alignment": AlignedDir.alignment_of(self.manifest),
            "replicas": self.replicas, "global_batch_size": self.config.batch_size,
            "sync_batchnorm": self.replicas > 1 and self.config.sync_batchnorm,
            "checkpoint_dir": self.checkpoint_dir, "checkpoint_key": self.checkpoint_key,
            "started_from": self.starting_point.record() if self.starting_point is not None else None,
            # the policy the weights were trained under; the saved .keras models compute in float32
            "precision": self.precision.to_dict(), **extra}

    def save_models(self, folder: str) -> None:
        """Both models as float32 ones (the same weights): a mixed policy is how they were trained, not how
        evaluation, export and serving compute with them."""
        os.makedirs(folder, exist_ok=True)
        artifacts.save_keras(precision.float32_model(self.training_model),
                             os.path.join(folder, artifacts.TRAINING_MODEL_FILE))
        artifacts.save_keras(precision.float32_model(self.embedding_model),
                             os.path.join(folder, artifacts.EMBEDDING_MODEL_FILE))
        # The rows with their identities: a run started from this model keeps them by name (arcface.warm_start).
        head = warm_start.Head(tuple(self.class_names), warm_start.head_rows_of(self.head))
        with atomic.replacing(os.path.join(folder, ModelDir.HEAD_FILE)) as tmp:
            head.save(tmp)

    def save_weights_h5(self) -> None:
        """The original tool left .h5 weights in save_path; --use_param_folder reads them back."""
        path = os.path.join(self.save_path, "training_model.weights.h5")
        with atomic.replacing(path) as tmp:
            self.training_model.save_weights(tmp)

    # -- the loop ------------------------------------------------------------------------------------------
    def restore_or_start(self) -> str:
        config = self.config
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        saved_config = os.path.join(self.run_folder, artifacts.CONFIG_FILE)
        where = self.checkpoint_dir if config.checkpoint_dir else self.output_path
        fresh = ("another --checkpoint_key (or an empty --checkpoint_dir)" if config.checkpoint_dir
                 else "an empty --save_path")
        if latest and not config.resume:
            raise TrainingError(
                f"{where} already holds a checkpoint ({os.path.basename(latest)}); pass --resume to "
                f"continue it, or choose {fresh} (nothing is overwritten)")
        if latest:
            if os.path.exists(saved_config):
                from arcface.config import load_yaml

                previous = load_yaml(saved_config)
                changed = [f for f in ARCHITECTURE_FIELDS if getattr(previous, f) != getattr(config, f)]
                if changed:
                    raise TrainingError(
                        f"the checkpoint in {where} was trained with another "
                        + ", ".join(f"{f} ({getattr(previous, f)!r}, now {getattr(config, f)!r})" for f in changed)
                        + f"; use {fresh}, or the same values to resume")
            self._restore(latest)
            return (f"resuming from {os.path.basename(latest)} at epoch {self.epochs_done + 1}, "
                    f"step {int(self.step_in_epoch.numpy())}")
        if self.starting_point is not None:
            return warm_start.start_trainer(self, self.starting_point)
        return "starting from scratch"

    def _restore(self, latest: str) -> None:
        status = self.checkpoint.restore(latest)
        if any(name.startswith("history/") for name, _ in tf.train.list_variables(latest)):
            status.assert_existing_objects_matched()
        else:  # written before the history moved into the checkpoint
            self.history.records = self._history_from_metadata()

    def _history_from_metadata(self) -> list[dict[str, Any]]:
        path = os.path.join(self.output_path, artifacts.METADATA_FILE)
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return [h for h in json.load(f).get("history", []) if h["epoch"] <= self.epochs_done]

    @property
    def epochs_done(self) -> int:
        return int(self.epoch.numpy())

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as e:
            if not self.multi_worker:
                raise
            # A peer died (or restarted): the collective ops abort. Fail the whole job, with the way back.
            raise TrainingError(
                f"{task_name(self.strategy)} lost contact with another training worker during epoch "
                f"{self.epochs_done + 1} ({collective_error_reason(e)}); the job fails: start all the workers "
                f"again, they resume from the last checkpoint in {self.checkpoint_dir}") from None
        finally:
            if self.scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def _fit(self) -> TrainResult:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        os.makedirs(os.path.join(self.save_path, artifacts.LOG_DIR), exist_ok=True)
        if self.chief:
            self._remove_leftovers_of_killed_runs()
        how_it_starts = self.restore_or_start()
        if self.multi_worker:
            self._check_workers_agree()
        self.config.save(os.path.join(self.save_path, artifacts.CONFIG_FILE))
        if self.chief and self.run_folder != self.output_path:
            self.config.save(os.path.join(self.run_folder, artifacts.CONFIG_FILE))
        self._announce(how_it_starts)
        budget, speed = Budget(self.config.max_minutes), Throughput()
        self.progress_at_start = float(self.time_progress.numpy())  # a resumed run's budget covers the rest
        nothing_to_do = self.epochs_done >= self.config.epochs and not self.history.records
        stopped = "nothing-to-do" if nothing_to_do else "completed"
        with EpochLog(os.path.join(self.save_path, artifacts.LOG_DIR)) as epoch_log:
            while self.epochs_done < self.config.epochs:
                meter = self._train_epoch(budget, speed)
                if meter is None:
                    stopped = "budget"
                    break
                self._finish_epoch(meter, epoch_log)
                if budget.spent() and self.epochs_done < self.config.epochs:
                    self._say(f"time budget of {self.config.max_minutes} min reached after epoch "
                              f"{self.epochs_done}; stopping cleanly")
                    stopped = "budget"
                    break
        return self._save_final(stopped, speed)

    def _check_workers_agree(self) -> None:
        """Every worker must resume from the same step, or they run different loops and train apart; that is
        what happens when the workers do not see the same checkpoints (a pod-local save_path). And every worker
        must train on the same data: the same manifest hash (the crops, when each aligned its own)."""
        step = self.epochs_done * self.steps_per_epoch + int(self.step_in_epoch.numpy())
        digest = np.frombuffer(bytes.fromhex(self.manifest.sha256), np.uint8).astype(np.int64)
        # The sums of the bytes and of their squares are the replicas' count times this worker's only when every
        # replica holds the same bytes (their variance is then 0).
        mine = np.concatenate([[step], digest, digest ** 2])
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(
            lambda: tf.constant(mine, tf.int64)), axis=None).numpy()
        if int(total[0]) != step * self.replicas:
            raise TrainingError(
                f"{task_name(self.strategy)} resumes at global step {step}, but not every worker does (the steps "
                f"of the {self.replicas} replicas add up to {int(total[0])}, not {step * self.replicas}): every "
                "worker must read the same checkpoints; set --checkpoint_dir (or --save_path) to a volume that all "
                "workers mount")
        if not np.array_equal(total[1:], mine[1:] * self.replicas):
            raise TrainingError(
                f"{task_name(self.strategy)} trains on the manifest {self.manifest.sha256[:16]}, but not every "
                "worker does: the workers must train on the same images (the same crops when aligning); give them "
                "the same --manifest, or the same data and a --save_path, --checkpoint_dir or --align_cache on a "
                "volume that all mount, so that they take the chief's crops")

    def _remove_leftovers_of_killed_runs(self) -> None:
        # TensorFlow writes a checkpoint's shards into <name>_temp/ before merging them; a kill in between
        # leaves that folder, which no later save removes.
        unfinished = glob.glob(os.path.join(self.checkpoint_dir, "*_temp"))
        for path in unfinished:
            shutil.rmtree(path, ignore_errors=True)
        stale = artifacts.remove_stale_temporaries(self.save_path)
        if self.run_folder != self.output_path:
            stale += artifacts.remove_stale_temporaries(self.run_folder)
        for path in [*unfinished, *stale]:
            log.info("removed %s, left by a run that was killed while writing it", path)

    def _announce(self, how_it_starts: str) -> None:
        config = self.config
        self._say(f"arcface {__version__}: {config.backbone} + {config.margin} head (s={config.enhance}, "
                  f"m={config.margins}), {len(self.class_names)} identities, {self.n_train} training images")
        self._say(f"replicas: {self.replicas}, global batch size: {config.batch_size} "
                  f"({config.batch_size // self.replicas} per replica), {self.steps_per_epoch} steps per epoch; "
                  f"{how_it_starts}")
        if self.sharded:
            rows = [rows for _, rows in pfc.shard_bounds(config.n_classes, self.replicas)]
            self._say(f"Partial-FC across replicas: {min(rows)}-{max(rows)} of the {config.n_classes} class centres "
                      f"on each replica, {config.sample_rate:g} of them sampled per step")
        if config.checkpoint_dir:
            self._say(f"checkpoints: {self.checkpoint_dir} (key {self.checkpoint_key})")
        if not self.chief:
            self._say(f"{task_name(self.strategy)} is not the chief: it writes into {self.scratch}, removed at the "
                      f"end; the chief writes {self.output_path}")

    def _say(self, line: str) -> None:
        if self.verbose:
            print(line)
        else:
            log.info(line)

    def _train_epoch(self, budget: Budget, speed: Throughput) -> EpochMeter | None:
        """The rest of the current epoch, from the step the checkpoint reached; None when the budget ran out
        before its last step (a checkpoint then holds the step reached)."""
        epoch, first = self.epochs_done, int(self.step_in_epoch.numpy())
        meter = EpochMeter(self.steps_per_epoch, self.verbose)
        for step, (images, labels) in enumerate(self._epoch_batches(epoch, first), start=first):
            if self.config.max_minutes > 0:
                start = self.progress_at_start
                self.time_progress.assign(start + (1.0 - start) * budget.fraction())
            started = time.monotonic()
            ce, decay, correct = (float(x) for x in self._train_step(images, labels))
            speed.add(self.config.batch_size, time.monotonic() - started)
            self._stop_unless_finite(ce, decay, epoch, step)
            meter.add(step, ce, decay, correct, self.config.batch_size, speed.rate)
            self.step_in_epoch.assign(step + 1)
            out_of_time = budget.spent() and step + 1 < self.steps_per_epoch
            if out_of_time or self._checkpoint_due(step + 1):
                self._save_checkpoint()
            if out_of_time:
                self._say(f"time budget of {self.config.max_minutes} min reached during epoch {epoch + 1}; saved "
                          f"a checkpoint at step {step + 1} to resume from")
                return None
        return meter

    def _epoch_batches(self, epoch: int, first_step: int):
        # Seeded by the epoch, so a resumed epoch sees the same batches and skips those already trained on.
        config = self.config
        dataset = self.make_dataset(
            self.manifest, "train", image_size=config.image_size, batch_size=config.batch_size, training=True,
            seed=config.seed + epoch, center_crop=config.center_crop, augment=config.augment, jitter=config.jitter, cache=config.cache,
            drop_remainder=self.drop_remainder).take(self.steps_per_epoch).skip(first_step)
        return self.strategy.experimental_distribute_dataset(dataset)

    def _stop_unless_finite(self, ce: float, decay: float, epoch: int, step: int) -> None:
        if math.isfinite(ce) and math.isfinite(decay):
            return
        last = self.manager.latest_checkpoint
        raise TrainingError(
            f"the loss became {'NaN' if math.isnan(ce) else 'infinite'} at epoch {epoch + 1}, step {step + 1}; "
            f"training stopped and the last good checkpoint ({os.path.basename(last) if last else 'none yet'}) "
            f"is kept. Lower --lr (now {self.config.lr}), set --clipnorm (e.g. 5), or check the data for broken "
            "images")

    def _checkpoint_due(self, steps_in_epoch: int) -> bool:
        """--checkpoint_steps within an epoch; the epoch's end always saves one."""
        every = self.config.checkpoint_steps
        return bool(every) and steps_in_epoch % every == 0 and steps_in_epoch < self.steps_per_epoch

    def _save_checkpoint(self) -> None:
        """Weights, optimizer, position and history in one checkpoint, numbered by the global step."""
        self.manager.save(checkpoint_number=self.epochs_done * self.steps_per_epoch
                          + int(self.step_in_epoch.numpy()))

    def _finish_epoch(self, meter: EpochMeter, epoch_log: EpochLog) -> None:
        epoch = self.epochs_done + 1
        val = self.validation_accuracy()
        record = meter.record(epoch, val, float(self.optimizer.learning_rate))
        self._say(f"epoch {epoch}/{self.config.epochs}: loss {record['loss']:.4f}, accuracy "
                  f"{record['accuracy']:.3f}, val_accuracy {'n/a' if val is None else f'{val:.3f}'}, "
                  f"{record['images_per_second']:.1f} img/s")
        self._keep_if_best(epoch, val)
        self.history.records.append(record)
        self.epoch.assign(epoch)
        self.step_in_epoch.assign(0)
        self._save_checkpoint()
        epoch_log.add(record, self.history.records)

    def _keep_if_best(self, epoch: int, val: float | None) -> None:
        """best/ holds the models of the epoch with the highest validation accuracy so far."""
        best = self.history.best_val_accuracy()
        if val is None or (best is not None and val <= best):
            return
        self.save_models(self.best_dir)
        artifacts.write_json(os.path.join(self.best_dir, artifacts.METADATA_FILE),
                             self.metadata(epoch=epoch, val_accuracy=val))

    def _save_final(self, stopped: str, speed: Throughput) -> TrainResult:
        history, steps = self.history.records, int(self.optimizer.iterations.numpy())
        self.save_models(self.save_path)
        self.save_weights_h5()
        best = os.path.join(self.save_path, artifacts.BEST_DIR)
        if self.best_dir != best and os.path.isdir(self.best_dir):  # kept beside the checkpoints: copy it over
            shutil.copytree(self.best_dir, best, dirs_exist_ok=True)
        # Also here: a run killed between its last checkpoint and the CSV left the CSV an epoch short.
        write_training_csv(os.path.join(self.save_path, artifacts.LOG_DIR, TRAINING_CSV), history)
        best = self.history.best_val_accuracy()
        artifacts.write_json(os.path.join(self.save_path, artifacts.METADATA_FILE), self.metadata(
            epochs_completed=self.epochs_done, steps=steps, stopped=stopped, best_val_accuracy=best,
            history=history))
        self._say(f"saved the models to {self.save_path} ({self.epochs_done}/{self.config.epochs} epochs, "
                  f"{stopped})")
        return TrainResult(self.output_path, self.epochs_done, steps, stopped, list(history), best,
                           self.manifest.sha256, speed.rate)


#: The folder under --checkpoint_dir where train() keeps the crops it aligned: beside the checkpoints, it outlives
#: a save_path (a retried step's is new and empty) and every worker mounts it.
ALIGN_CACHE_DIR = "align-cache"


def train(config: TrainConfig, manifest=None, *, verbose: int = 1, make_dataset=make_dataset,
          model_store: str = "", model_name: str = "arcface") -> TrainResult:
    """Train from a config; without a manifest the data folders are validated first (as the original did), then
    aligned when ``config.align`` says so (see :func:`align_for_training`). ``model_store``/``model_name``: the
    store whose current version ``--init_from champion`` names."""
    from arcface import data

    config = config.validate()
    # Before any work: a model to start from that cannot be used is reported at once.
    starting_point = warm_start.resolve(config.init_from, model_store=model_store, model_name=model_name)
    # First, before anything starts TensorFlow's runtime (MTCNN does): MultiWorkerMirroredStrategy can configure
    # the collective ops only at program startup.
    strategy = pick_strategy()
    scratch = None
    if manifest is None:
        # A non-chief worker validates (and aligns) into a folder of its own, removed at the end: only the chief
        # writes save_path.
        folder = os.path.abspath(config.save_path)
        if not is_chief(strategy):
            folder = scratch = tempfile.mkdtemp(prefix="arcface-worker-data-")
        train_root, validation_root = data.resolve_roots(config.train_data, config.validation_data)
        result = data.run_validation(train_root, validation_root, os.path.join(folder, "data"),
                                     n_classes=config.n_classes, min_images=config.min_images, strict=config.strict)
        manifest = result.manifest
        if config.align != "none":  # as the pipeline's align step does, so `arcface train` trains on the same crops
            manifest = align_for_training(config, strategy, os.path.join(folder, "data"),
                                          os.path.join(folder, "aligned"))
    elif isinstance(manifest, str | os.PathLike):
        manifest = data.Manifest.read(manifest)
    if config.align != "none" and manifest.alignment is None:
        log.warning("align=%s but the manifest holds the images as they are (not aligned crops): the model is "
                    "trained, and recorded, as align=none; run `arcface align` on the manifest first to train on "
                    "aligned faces, or pass --align none to say so", config.align)
    try:
        return Trainer(config, manifest, verbose=verbose, make_dataset=make_dataset, strategy=strategy,
                       starting_point=starting_point).fit()
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def align_for_training(config: TrainConfig, strategy: tf.distribute.Strategy, manifest_dir: str,
                       output_dir: str):
    """Align the validated manifest in ``manifest_dir`` into ``output_dir``, reusing the crops made before.

    The cache is --align_cache, else <--checkpoint_dir>/align-cache, else the output folder itself (in save_path):
    a restarted run, or a retry into a new save_path beside the same checkpoints, aligns only what changed. With
    several workers the chief aligns first and writes the cache; the others wait for it, then take its crops
    (by sha256, the cache only read), so that all train on the same crops without aligning them again. A worker
    that cannot see the chief's folder aligns for itself, and Trainer checks that all ended with the same
    manifest.
    """
    from arcface.contracts import AlignedDir
    from arcface.data.align import run_alignment

    chief = is_chief(strategy)
    shared = config.align_cache or (os.path.join(os.path.abspath(config.checkpoint_dir), ALIGN_CACHE_DIR)
                                    if config.checkpoint_dir else "")
    if chief:
        cache = shared or output_dir
    else:
        cache = shared or os.path.join(os.path.abspath(config.save_path), "aligned")  # the chief's output_dir

    def align():
        return run_alignment(manifest_dir, output_dir, method=config.align, image_size=config.image_size,
                             cache_dir=cache, strict=config.strict, n_classes=config.n_classes, write_cache=chief)

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return align()
    if chief:
        manifest = align()
        _wait_for_every_worker(strategy, "the chief aligned the faces")
        return manifest
    _wait_for_every_worker(strategy, "the chief aligned the faces")
    if not AlignedDir.has_records(cache):
        log.warning("%s does not see the chief's crops in %s, so it aligns the faces itself; to align them once, "
                    "give the workers a --save_path, --checkpoint_dir or --align_cache on a volume they all mount",
                    task_name(strategy), cache)
    return align()


def _wait_for_every_worker(strategy: tf.distribute.Strategy, until: str) -> None:
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
