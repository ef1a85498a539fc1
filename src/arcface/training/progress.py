"""How far a run has got and what it writes about it: the time budget, the step throughput, the meter of an
epoch, and logs/ (training.csv and TensorBoard events)."""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from arcface import atomic

TRAINING_CSV = "training.csv"  # under artifacts.LOG_DIR


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
        scalar = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        with self.writer.as_default():
            for key, value in record.items():
                if key != "epoch" and value is not None:
                    tf.summary.write(key, tf.constant(float(value)), step=record["epoch"], metadata=scalar)
        self.writer.flush()

