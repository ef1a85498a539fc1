"""The training step: ArcFace on a validated manifest, with checkpoints that survive a kill.

The loop is written out (rather than ``Model.fit``) because four things need the step itself: Partial-FC's
sparse update of the sampled class centres, checkpoints at any step that resume at that step, the NaN guard
that keeps the last good checkpoint, and a wall-clock budget that stops between two steps.

This module holds the run (:func:`train`) and the epoch loop (:class:`Trainer`); the parts it is built of are in
:mod:`arcface.training`: the step, the optimizer, checkpoints and resuming, progress and logs, distribution.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import keras
import tensorflow as tf

from arcface import __version__, artifacts, atomic, precision, warm_start
from arcface.config import TrainConfig
from arcface.contracts import AlignedDir, ModelDir
from arcface.data.align import run_alignment
from arcface.data.input import make_dataset
from arcface.data.manifest import Manifest
from arcface.data.validate import resolve_roots, run_validation
from arcface.model_input import ModelInput
from arcface.models import MarginHead, build_models, fast_training
from arcface.models import partial_fc as pfc
from arcface.training import TrainingError
from arcface.training.checkpoints import (
    ARCHITECTURE_FIELDS,
    RUN_CONTROL_FIELDS,
    History,
    check_resumable,
    checkpoint_key,
    ensure_writable,
    history_from_metadata,
    remove_leftovers_of_killed_runs,
)
from arcface.training.distribute import (
    check_workers_agree,
    collective_error_reason,
    is_chief,
    pick_strategy,
    task_name,
    tf_config_is_chief,
    wait_for_every_worker,
)
from arcface.training.optimization import MomentumSGD, WarmupSchedule, decayed_variables, weight_decay_loss
from arcface.training.progress import (
    TRAINING_CSV,
    Budget,
    EpochLog,
    EpochMeter,
    Throughput,
    write_training_csv,
)
from arcface.training.step import TrainStep

# The names this module has always offered (tests, components, benchmarks and the CLI import them from here).
__all__ = [
    "ALIGN_CACHE_DIR", "ARCHITECTURE_FIELDS", "FAST_PRELU", "FUSED_BATCH_NORM", "FUSED_SGD", "RUN_CONTROL_FIELDS",
    "TRAINING_CSV", "TUNING", "Budget", "EpochLog", "EpochMeter", "History", "MomentumSGD", "Throughput", "Trainer",
    "TrainingError", "TrainResult", "WarmupSchedule", "align_for_training", "checkpoint_key",
    "collective_error_reason", "decayed_variables", "ensure_writable", "is_chief", "make_optimizer",
    "pick_strategy", "task_name", "tf_config_is_chief", "train", "weight_decay_loss", "write_training_csv",
]

log = logging.getLogger("arcface.train")


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


# ---------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------
class Trainer:
    """One training run: builds the models, then runs the epoch loop (:meth:`fit`) over the parts of
    :mod:`arcface.training`: each step is a :class:`~arcface.training.step.TrainStep`, checkpoints hold the
    position and the :class:`~arcface.training.checkpoints.History`, and each epoch ends in the logs of
    :class:`~arcface.training.progress.EpochLog`."""

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
        self._plan_steps()
        self._set_paths()
        self._build_models()
        self.history = History()
        self.progress_at_start = 0.0
        self.checkpoint = tf.train.Checkpoint(model=self.training_model, optimizer=self.optimizer,
                                              epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                                              history=self.history, time_progress=self.time_progress)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_write_dir, max_to_keep=2)
        self._train_step = self._make_train_step()

    def _plan_steps(self) -> None:
        """The replicas' shares of a batch and the steps of an epoch; a setting that cannot work with this data
        or these devices fails here, before any model is built."""
        config = self.config
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

    def _build_models(self) -> None:
        """The models, the optimizer and the position in the run, under the strategy's scope."""
        config = self.config
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
            self._tune_layers()
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

    def _tune_layers(self) -> None:
        if self.replicas > 1 and self.config.sync_batchnorm:
            # Statistics over the global batch, as one device computes them: with per-replica statistics the
            # replicas normalize by those of batch_size / replicas images, and train another model.
            for layer in fast_training.batch_norm_layers(self.training_model):
                layer.synchronized = True
        if not tf.config.list_logical_devices("GPU"):
            fast_training.install(self.training_model, batch_norm=FUSED_BATCH_NORM, prelu=FAST_PRELU)

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
        return TrainStep(self).function()

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
        alignment = AlignedDir.alignment_of(self.manifest)
        return {
            "package_version": __version__, "framework": f"tensorflow {tf.__version__} / keras {keras.__version__}",
            "class_names": self.class_names, "manifest_sha256": self.manifest.sha256,
            "image_size": self.config.image_size, "embedding_size": self.config.embedding_size,
            "backbone": self.config.backbone, "margin": self.config.margin,
            # what the model was trained on (from the manifest, not the config): every entrance aligns the same way
            "alignment": alignment,
            "input": ModelInput(self.config.image_size, self.config.center_crop, alignment["method"]).to_dict(),
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
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        where = self.checkpoint_dir if self.config.checkpoint_dir else self.output_path
        check_resumable(self.config, latest, os.path.join(self.run_folder, artifacts.CONFIG_FILE), where)
        if latest:
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
            self.history.records = history_from_metadata(self.output_path, self.epochs_done)

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
        step = self.epochs_done * self.steps_per_epoch + int(self.step_in_epoch.numpy())
        check_workers_agree(self.strategy, step, self.manifest.sha256)

    def _remove_leftovers_of_killed_runs(self) -> None:
        folders = [self.save_path] + ([self.run_folder] if self.run_folder != self.output_path else [])
        for path in remove_leftovers_of_killed_runs(self.checkpoint_dir, folders):
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
        train_root, validation_root = resolve_roots(config.train_data, config.validation_data)
        result = run_validation(train_root, validation_root, os.path.join(folder, "data"),
                                n_classes=config.n_classes, min_images=config.min_images, strict=config.strict)
        manifest = result.manifest
        if config.align != "none":  # as the pipeline's align step does, so `arcface train` trains on the same crops
            manifest = align_for_training(config, strategy, os.path.join(folder, "data"),
                                          os.path.join(folder, "aligned"))
    elif isinstance(manifest, str | os.PathLike):
        manifest = Manifest.read(manifest)
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
        wait_for_every_worker(strategy, "the chief aligned the faces")
        return manifest
    wait_for_every_worker(strategy, "the chief aligned the faces")
    if not AlignedDir.has_records(cache):
        log.warning("%s does not see the chief's crops in %s, so it aligns the faces itself; to align them once, "
                    "give the workers a --save_path, --checkpoint_dir or --align_cache on a volume they all mount",
                    task_name(strategy), cache)
    return align()

