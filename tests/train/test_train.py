"""Training on tiny real data: it learns, it resumes, it guards against NaN, it loads earlier weights."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from arcface import artifacts
from arcface.train import Trainer, TrainingError, checkpoint_key, train, weight_decay_loss
from tests.train.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_loss_falls_and_validation_beats_chance(tiny_manifest, tmp_path):
    config = tiny_config(tmp_path / "run", epochs=12, lr=0.1)
    result = train(config, tiny_manifest, verbose=0)
    losses = [h["loss"] for h in result.history]
    assert result.epochs_completed == 12 and result.stopped == "completed"
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.best_val_accuracy > 0.5, "chance is 0.25 with four identities"
    for name in (artifacts.TRAINING_MODEL_FILE, artifacts.EMBEDDING_MODEL_FILE, artifacts.CONFIG_FILE,
                 artifacts.METADATA_FILE, "training_model.weights.h5", "logs/training.csv"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "best" / artifacts.EMBEDDING_MODEL_FILE).exists()
    events = list((tmp_path / "run" / "logs").glob("events.out.tfevents*"))
    assert len(events) == 1, f"one TensorBoard writer for the whole run, not one per epoch: {events}"
    assert [int(row["epoch"]) for row in read_training_csv(tmp_path / "run")] == list(range(1, 13))
    metadata = json.loads((tmp_path / "run" / artifacts.METADATA_FILE).read_text())
    assert metadata["manifest_sha256"] == tiny_manifest.sha256
    assert metadata["class_names"] == ["s1", "s2", "s3", "s4"]


def test_same_seed_same_first_epoch_loss(tiny_manifest, tmp_path):
    a = train(tiny_config(tmp_path / "a", epochs=1), tiny_manifest, verbose=0)
    b = train(tiny_config(tmp_path / "b", epochs=1), tiny_manifest, verbose=0)
    c = train(tiny_config(tmp_path / "c", epochs=1, seed=8), tiny_manifest, verbose=0)
    assert a.history[0]["loss"] == pytest.approx(b.history[0]["loss"], rel=1e-6)
    assert a.history[0]["loss"] != pytest.approx(c.history[0]["loss"], rel=1e-6)


def test_resume_continues_the_epoch_count(tiny_manifest, tmp_path):
    first = train(tiny_config(tmp_path / "run", epochs=2), tiny_manifest, verbose=0)
    assert first.epochs_completed == 2
    second = train(tiny_config(tmp_path / "run", epochs=3), tiny_manifest, verbose=0)
    assert second.epochs_completed == 3
    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.steps == 3 * 3  # 28 images, batch 8: three steps an epoch, counted across both runs


def test_history_comes_back_from_the_checkpoint_on_resume(tiny_manifest, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_config(run, epochs=2), tiny_manifest, verbose=0)
    # What a run killed at the wrong moment may leave beside its checkpoint: metadata.json without the epochs
    # the checkpoint went through, and a row of training.csv twice. Neither may leak into the resumed history.
    metadata = json.loads((run / artifacts.METADATA_FILE).read_text())
    (run / artifacts.METADATA_FILE).write_text(json.dumps({**metadata, "history": []}))
    csv_lines = (run / "logs" / "training.csv").read_text().splitlines(keepends=True)
    (run / "logs" / "training.csv").write_text("".join(csv_lines + csv_lines[-1:]))

    second = train(tiny_config(run, epochs=4), tiny_manifest, verbose=0)
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history, "the first run's records, restored unchanged"
    saved = json.loads((run / artifacts.METADATA_FILE).read_text())["history"]
    assert saved == second.history
    rows = read_training_csv(run)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert [float(row["loss"]) for row in rows] == pytest.approx([h["loss"] for h in saved], rel=1e-12)


def test_a_checkpoint_without_history_resumes_with_the_history_of_metadata_json(tiny_manifest, tmp_path):
    """Checkpoints written before the history moved into them: its epochs come from metadata.json, trimmed."""
    run = tmp_path / "run"
    first = train(tiny_config(run, epochs=1), tiny_manifest, verbose=0)
    trainer = Trainer(tiny_config(run, epochs=1), tiny_manifest, verbose=0)
    trainer.restore_or_start()
    legacy = tf.train.Checkpoint(model=trainer.training_model, optimizer=trainer.optimizer, epoch=trainer.epoch,
                                 step_in_epoch=trainer.step_in_epoch)
    shutil.rmtree(run / "checkpoints")
    tf.train.CheckpointManager(legacy, str(run / "checkpoints"), max_to_keep=2).save(checkpoint_number=3)
    # metadata.json of a run killed later on: an epoch beyond the checkpoint, to be dropped on resume.
    metadata = json.loads((run / artifacts.METADATA_FILE).read_text())
    ahead = [*first.history, {**first.history[0], "epoch": 2}]
    (run / artifacts.METADATA_FILE).write_text(json.dumps({**metadata, "history": ahead}))

    second = train(tiny_config(run, epochs=2), tiny_manifest, verbose=0)
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert second.history[0] == first.history[0]


def test_checkpoint_dir_outlives_save_path_and_the_key_picks_the_run(tiny_manifest, tmp_path):
    """A retried pipeline step gets a new, empty output folder: the checkpoints it resumes from are on a volume
    (--checkpoint_dir), in the folder of its run's key."""
    pvc = tmp_path / "pvc"
    first = train(tiny_config(tmp_path / "attempt-1", epochs=1, checkpoint_dir=str(pvc), checkpoint_key="run-1"),
                  tiny_manifest, verbose=0)
    assert not (tmp_path / "attempt-1" / "checkpoints").exists()
    assert tf.train.latest_checkpoint(str(pvc / "run-1")).endswith("ckpt-3")

    retry = train(tiny_config(tmp_path / "attempt-2", epochs=2, checkpoint_dir=str(pvc), checkpoint_key="run-1"),
                  tiny_manifest, verbose=0)
    assert retry.steps == 6 and [h["epoch"] for h in retry.history] == [1, 2]
    assert retry.history[0] == first.history[0], "epoch 1 comes back from the checkpoint, not trained again"
    metadata = json.loads((tmp_path / "attempt-2" / artifacts.METADATA_FILE).read_text())
    assert metadata["checkpoint_key"] == "run-1" and metadata["checkpoint_dir"] == str(pvc / "run-1")
    assert (tmp_path / "attempt-2" / "best" / artifacts.EMBEDDING_MODEL_FILE).is_file(), "best/ is kept with them"

    other = train(tiny_config(tmp_path / "attempt-3", epochs=1, checkpoint_dir=str(pvc), checkpoint_key="run-2"),
                  tiny_manifest, verbose=0)
    assert other.steps == 3 and other.history[0]["loss"] == pytest.approx(first.history[0]["loss"], rel=1e-6)
    assert sorted(p.name for p in pvc.iterdir()) == ["run-1", "run-2"]
    with pytest.raises(TrainingError, match=r"pvc/run-1 already holds a checkpoint .*another --checkpoint_key"):
        train(tiny_config(tmp_path / "attempt-4", epochs=2, checkpoint_dir=str(pvc), checkpoint_key="run-1",
                          resume=False), tiny_manifest, verbose=0)


def test_derived_checkpoint_key_follows_the_data_and_the_training_settings(tmp_path):
    config = tiny_config(tmp_path / "a", checkpoint_dir=str(tmp_path / "pvc"))
    key = checkpoint_key(config, "ab" * 32)
    assert key.startswith("abababab")
    assert checkpoint_key(config.replace(save_path=str(tmp_path / "b"), max_minutes=5.0, train_data="/elsewhere"),
                          "ab" * 32) == key, "where it is written, or the data mounted, is the same run"
    assert checkpoint_key(config.replace(lr=0.01), "ab" * 32) != key
    assert checkpoint_key(config, "cd" * 32) != key
    assert checkpoint_key(config.replace(checkpoint_key="kfp-run-7"), "ab" * 32) == "kfp-run-7"


def test_unwritable_checkpoint_dir_is_explained(tiny_manifest, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(TrainingError, match=r"--checkpoint_dir=.*a-file/pvc: cannot write checkpoints to .*a-file/pvc/"
                                            r".*mount a writable volume"):
        Trainer(tiny_config(tmp_path / "run", checkpoint_dir=str(tmp_path / "a-file" / "pvc")), tiny_manifest,
                verbose=0)


def test_existing_checkpoint_is_not_overwritten_without_resume(tiny_manifest, tmp_path):
    train(tiny_config(tmp_path / "run", epochs=1), tiny_manifest, verbose=0)
    with pytest.raises(TrainingError, match="already holds a checkpoint.*--resume"):
        train(tiny_config(tmp_path / "run", epochs=2, resume=False), tiny_manifest, verbose=0)
    with pytest.raises(TrainingError, match="another backbone"):
        train(tiny_config(tmp_path / "run", epochs=2, backbone="MobileFaceNet"), tiny_manifest, verbose=0)


def test_budget_stops_cleanly_and_resumes_mid_epoch(tiny_manifest, tmp_path):
    config = tiny_config(tmp_path / "run", epochs=2, max_minutes=1e-6)
    result = train(config, tiny_manifest, verbose=0)
    assert result.stopped == "budget" and result.epochs_completed == 0
    state = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")))
    assert state.get_tensor("step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert (tmp_path / "run" / artifacts.EMBEDDING_MODEL_FILE).exists(), "a budget stop still saves the models"
    done = train(config.replace(max_minutes=0.0), tiny_manifest, verbose=0)
    assert done.epochs_completed == 2 and done.steps == 6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_manifest, tmp_path):
    train(tiny_config(tmp_path / "run", epochs=1), tiny_manifest, verbose=0)
    from arcface import data

    def poisoned(*args, **kwargs):
        return data.make_dataset(*args, **kwargs).map(lambda x, y: (x * np.nan, y))

    with pytest.raises(TrainingError, match=r"loss became NaN at epoch 2, step 1.*ckpt-3.*is kept"):
        train(tiny_config(tmp_path / "run", epochs=2), tiny_manifest, verbose=0, make_dataset=poisoned)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-3")


def test_weight_decay_is_in_the_loss(tiny_manifest, tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", decay=0.01), tiny_manifest, verbose=0)
    kernels = {v.path for v in trainer.decayed}
    assert any(p.endswith("embedding_fc/kernel") for p in kernels)
    assert any(p.endswith("head/centers") for p in kernels)
    assert not any("bn" in p or p.endswith("bias") for p in kernels)
    expected = 0.5 * 0.01 * sum(float(np.sum(v.numpy() ** 2)) for v in trainer.decayed)
    assert float(weight_decay_loss(trainer.decayed, 0.01)) == pytest.approx(expected, rel=1e-5)
    from arcface import data

    images, labels = next(iter(data.make_dataset(tiny_manifest, "train", image_size=48, batch_size=8,
                                                 training=True)))
    _, decay, _ = trainer._train_step(images, labels)
    assert float(decay) == pytest.approx(expected, rel=1e-4), "the step's loss carries the decay term"


def test_backbone_clipnorm_bounds_the_backbone_step_and_leaves_the_head_alone(tiny_manifest, tmp_path):
    """Plain SGD (no momentum): one step moves the backbone by lr * its clipped gradient, so the backbone's weight
    change has norm <= lr * backbone_clipnorm; the head's centres are not clipped (they move as without it)."""
    from arcface import data

    images, labels = next(iter(data.make_dataset(tiny_manifest, "train", image_size=48, batch_size=8,
                                                 training=False)))
    moved = {}
    for limit in (0.0, 1e-3):
        trainer = Trainer(tiny_config(tmp_path / f"clip{limit}", momentum=0.0, backbone_clipnorm=limit,
                                      augment=False), tiny_manifest, verbose=0)
        backbone = [v.numpy() for v in trainer.backbone.trainable_variables]
        centers = trainer.head.centers.numpy()
        lr = float(trainer.optimizer.learning_rate)
        trainer._train_step(images, labels)
        moved[limit] = (np.sqrt(sum(float(np.sum((v.numpy() - b) ** 2))
                                    for v, b in zip(trainer.backbone.trainable_variables, backbone, strict=True))),
                        trainer.head.centers.numpy() - centers, lr)
    step, centers_step, lr = moved[1e-3]
    assert step <= lr * 1e-3 * (1 + 1e-4)
    assert moved[0.0][0] > 10 * step  # without the clip the backbone moves far more
    np.testing.assert_allclose(centers_step, moved[0.0][1], rtol=1e-4, atol=1e-7)


def test_use_param_folder_loads_backbone_and_reinitializes_a_different_head(tiny_manifest, tmp_path):
    """The original tool's folder of .h5 weights (a run's folder goes by class name: tests/train/test_warm_start)."""
    train(tiny_config(tmp_path / "source", epochs=1), tiny_manifest, verbose=0)
    (tmp_path / "params").mkdir()
    shutil.copy2(tmp_path / "source" / "training_model.weights.h5", tmp_path / "params")
    source = Trainer(tiny_config(tmp_path / "unused"), tiny_manifest, verbose=0)
    source.training_model.load_weights(str(tmp_path / "source" / "training_model.weights.h5"))

    same = Trainer(tiny_config(tmp_path / "same", init_from=str(tmp_path / "params")), tiny_manifest,
                   verbose=0)
    assert "loaded backbone and head" in same.restore_or_start()
    for a, b in zip(same.training_model.weights, source.training_model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    from arcface.data import Manifest

    three = Manifest(rows=[r for r in tiny_manifest.rows if r.identity != "s4"], roots=tiny_manifest.roots,
                     class_names=["s1", "s2", "s3"])
    other = Trainer(tiny_config(tmp_path / "other", n_classes=3, init_from=str(tmp_path / "params")),
                    three, verbose=0)
    assert "re-initialized" in other.restore_or_start()
    for a, b in zip(other.backbone.weights, source.backbone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_n_classes_mismatch_is_explained(tiny_manifest, tmp_path):
    with pytest.raises(TrainingError, match="--n_classes=5 but the training data holds 4 identities"):
        Trainer(tiny_config(tmp_path / "run", n_classes=5), tiny_manifest, verbose=0)


def test_partial_fc_trains(tiny_manifest, tmp_path):
    result = train(tiny_config(tmp_path / "run", sample_rate=0.5, epochs=3), tiny_manifest, verbose=0)
    assert result.epochs_completed == 3
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "logs").mkdir()
    stale = [tmp_path / f"metadata.json.tmp-{dead}", tmp_path / "logs" / f"training_model.tmp-{dead}.weights.h5"]
    live = tmp_path / f"embedding_model.tmp-{os.getpid()}.keras"
    for path in (*stale, live, tmp_path / "config.yaml"):
        path.write_text("x")
    assert sorted(artifacts.remove_stale_temporaries(tmp_path)) == sorted(map(str, stale))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["config.yaml", live.name]


@pytest.mark.slow
def test_original_command_line_both_spellings(tiny_data, tmp_path):
    common = [sys.executable, os.path.join(REPO, "train.py"), "--backbone=TinyFaceNet", "--image_size", "48",
              "--embedding_size=16", "--n_classes", "4", "--epochs=1", "--batch_size", "8"]
    out = subprocess.run(common + [f"--train_data={tiny_data}", "--validation_data", str(tiny_data),
                                   "--save_path", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "global batch size: 8" in out.stdout and "1/1 epochs" in out.stdout
    bad = subprocess.run(common + ["--penalty=-1", f"--train_data={tiny_data}", f"--save_path={tmp_path / 'b'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--penalty=-1.0 is out of range" in bad.stderr


@pytest.mark.slow
def test_kill_at_any_moment_then_resume_ends_with_all_epochs(tiny_data, tmp_path):
    """SIGKILL training at several moments, each after it saved a new checkpoint: every restart resumes from
    the last checkpoint (never from zero), and the final history holds every epoch exactly once."""
    save, epochs, steps_per_epoch = tmp_path / "run", 12, 7  # 28 images, batch 4
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--backbone=TinyFaceNet", "--image_size=48",
           "--embedding_size=16", "--n_classes=4", f"--epochs={epochs}", "--batch_size=4", "--checkpoint_steps=2",
           f"--train_data={tiny_data}", f"--validation_data={tiny_data}", f"--save_path={save}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    reached = 0
    # Delays after a new checkpoint shows up: the kill lands in the next steps, validation or the saving.
    for run, delay in enumerate((0.0, 0.6, 1.7)):
        output = tmp_path / f"run-{run}.log"
        with open(output, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            wait_for_checkpoint_beyond(save / "checkpoints", reached, proc)
            time.sleep(delay)
            assert proc.poll() is None, f"run {run} finished before the kill; the test needs more epochs"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        step = global_step_of_latest_checkpoint(save / "checkpoints", steps_per_epoch)
        assert step > reached, f"run {run} made no progress past step {reached}: it restarted from zero"
        reached = step
        if run:
            assert "resuming from" in output.read_text(), f"run {run} did not resume"
    final = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert final.returncode == 0, final.stderr
    assert f"resuming from ckpt-{reached} " in final.stdout
    metadata = json.loads((save / artifacts.METADATA_FILE).read_text())
    assert metadata["epochs_completed"] == epochs
    assert metadata["steps"] == epochs * steps_per_epoch
    assert [h["epoch"] for h in metadata["history"]] == list(range(1, epochs + 1))
    rows = read_training_csv(save)
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    assert [float(row["loss"]) for row in rows] == pytest.approx([h["loss"] for h in metadata["history"]],
                                                                  rel=1e-12)
    assert not list(save.rglob("*.tmp-*")) + list(save.rglob("*_temp")), "no temporary is left behind"


@pytest.mark.slow
def test_a_killed_run_retried_into_a_new_save_path_resumes_from_checkpoint_dir(tiny_data, tmp_path):
    """As a retried KFP step: the first attempt is killed after a checkpoint; the retry writes a new, empty output
    folder, and with the same --checkpoint_key continues from the last step. Another key starts fresh."""
    pvc, epochs, steps_per_epoch = tmp_path / "pvc", 4, 7  # 28 images, batch 4

    def command(save_path, key, *more):
        return [sys.executable, os.path.join(REPO, "train.py"), "--backbone=TinyFaceNet", "--image_size=48",
                "--embedding_size=16", "--n_classes=4", f"--epochs={epochs}", "--batch_size=4", "--align=none",
                "--checkpoint_steps=2", f"--train_data={tiny_data}", f"--validation_data={tiny_data}",
                f"--save_path={save_path}", f"--checkpoint_dir={pvc}", f"--checkpoint_key={key}", *more]

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "attempt-1.log", "w") as out:
        proc = subprocess.Popen(command(tmp_path / "attempt-1", "run-1"), stdout=out, stderr=subprocess.STDOUT,
                                env=env)
        wait_for_checkpoint_beyond(pvc / "run-1", 2, proc)
        assert proc.poll() is None, "the first attempt finished before the kill; the test needs more epochs"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reached = global_step_of_latest_checkpoint(pvc / "run-1", steps_per_epoch)
    assert reached > 2

    retry = subprocess.run(command(tmp_path / "attempt-2", "run-1"), capture_output=True, text=True, env=env,
                           timeout=600)
    assert retry.returncode == 0, retry.stderr
    assert f"resuming from ckpt-{reached} " in retry.stdout
    metadata = json.loads((tmp_path / "attempt-2" / artifacts.METADATA_FILE).read_text())
    assert metadata["steps"] == epochs * steps_per_epoch and metadata["checkpoint_key"] == "run-1"
    assert [h["epoch"] for h in metadata["history"]] == list(range(1, epochs + 1))
    assert (tmp_path / "attempt-2" / artifacts.EMBEDDING_MODEL_FILE).is_file()
    assert not (tmp_path / "attempt-2" / "checkpoints").exists()

    other = subprocess.run(command(tmp_path / "attempt-3", "run-2", "--max_minutes=1e-6"), capture_output=True,
                           text=True, env=env, timeout=600)
    assert other.returncode == 0, other.stderr
    assert "starting from scratch" in other.stdout and "resuming" not in other.stdout
    assert global_step_of_latest_checkpoint(pvc / "run-2", steps_per_epoch) == 1
    assert not list(pvc.rglob("*.tmp-*")) + list(pvc.rglob("*_temp")), "no temporary is left behind"


def wait_for_checkpoint_beyond(folder, step: int, proc, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = tf.train.latest_checkpoint(str(folder))
        if latest and int(latest.rsplit("-", 1)[1]) > step:
            return
        assert proc.poll() is None, f"training exited ({proc.returncode}) before saving a checkpoint past {step}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past step {step} within {timeout} s")


def global_step_of_latest_checkpoint(folder, steps_per_epoch: int) -> int:
    """Read back whole (every checkpoint the index names must be); its epoch and step give the global step."""
    state = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(folder)))
    epoch = int(state.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    return epoch * steps_per_epoch + int(state.get_tensor("step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE"))


def read_training_csv(save_path) -> list[dict[str, str]]:
    with open(os.path.join(save_path, "logs", "training.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_mixed_float16_step_runs_with_loss_scaling_and_does_not_leak(tiny_manifest, tmp_path):
    import keras

    config = tiny_config(tmp_path / "mp", epochs=1, steps_per_epoch=2, precision="mixed_float16")
    trainer = Trainer(config, tiny_manifest, verbose=0)
    assert isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer)
    result = trainer.fit()
    assert np.isfinite(result.history[0]["loss"])
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    Trainer(tiny_config(tmp_path / "fp32"), tiny_manifest, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_original_mixed_precision_flag_means_auto(tiny_manifest, tmp_path, caplog):
    import logging

    import keras

    from arcface import precision

    want = precision.choose("auto", precision.local_devices())
    with caplog.at_level(logging.INFO, logger="arcface.train"):
        trainer = Trainer(tiny_config(tmp_path / "mp", mixed_precision=True), tiny_manifest, verbose=0)
    assert trainer.precision == want
    assert keras.mixed_precision.global_policy().name == want.policy
    assert isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer) == want.loss_scaling
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision: ")]
    assert lines == [f"precision: {want.policy} ({want.reason})"]
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_bfloat16_trains_and_saves_a_float32_model(tiny_manifest, tmp_path):
    import keras

    from arcface.precision import computes_in_float32

    config = tiny_config(tmp_path / "bf16", epochs=1, steps_per_epoch=3, precision="mixed_bfloat16")
    trainer = Trainer(config, tiny_manifest, verbose=0)
    assert trainer.backbone.compute_dtype == "bfloat16" and trainer.head.compute_dtype == "float32"
    assert not isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer), "no loss scaling in bf16"
    losses = [float(trainer._train_step(images, labels)[0])
              for images, labels in trainer._epoch_batches(epoch=0, first_step=0)]
    assert len(losses) == 3 and np.all(np.isfinite(losses)), losses
    result = trainer.fit()  # the epoch again, from the start (no checkpoint yet), through to the saved models
    keras.mixed_precision.set_global_policy("float32")
    assert result.stopped == "completed" and np.isfinite(result.history[0]["loss"])

    metadata = json.loads((tmp_path / "bf16" / artifacts.METADATA_FILE).read_text())
    assert metadata["precision"] == {"policy": "mixed_bfloat16", "requested": "mixed_bfloat16", "loss_scaling": False,
                                     "reason": "--precision=mixed_bfloat16 was asked for"}
    loaded = artifacts.load_model_dir(tmp_path / "bf16", with_training_model=True)
    assert computes_in_float32(loaded.embedding_model) and computes_in_float32(loaded.training_model)
    images = next(iter(trainer._epoch_batches(epoch=0, first_step=0)))[0]
    embeddings = loaded.embedding_model(images, training=False)
    assert embeddings.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings.numpy(), axis=1), 1.0, rtol=1e-5)
    # The same weights as the bfloat16 model that was trained: the two embeddings differ by bfloat16 rounding
    # only (2^-8 of each value a layer; 1 - cos < 1e-3 is an angle of 0.045 rad, about ten such steps; measured
    # 5e-6).
    trained = trainer.embedding_model(images, training=False).numpy()
    cosines = np.sum(trained * embeddings.numpy(), axis=1)
    assert cosines.min() > 0.999, cosines
