"""Partial-FC across replicas (arcface.models.partial_fc) on two logical CPU devices, against NumPy.

The sharded computation runs in a subprocess (tests/train/sharded_probe.py; logical devices are fixed once
TensorFlow starts); the reference here is ArcFace's cross-entropy and its gradient written out in float64
NumPy, itself checked against finite differences, so nothing of the code under test checks itself.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from arcface.models.partial_fc import shard_bounds
from tests.train.test_distributed import REPO, env

TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------------------
def arcface_loss_and_grads(x, w, labels, classes, scale, margin, label_smoothing=0.0):
    """Mean ArcFace cross-entropy of the softmax over ``classes`` (global ids, all or a sample, holding every
    label), and its gradient with respect to ``x`` and to all of ``w`` (zero on the rows left out). With label
    smoothing e the target is (1 - e) one_hot + e / len(classes)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    classes = np.asarray(classes)
    col = np.searchsorted(classes, labels)
    assert np.array_equal(classes[col], labels), "the classes must hold every label"
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wk = w[classes]
    wn = wk / np.linalg.norm(wk, axis=1, keepdims=True)
    cos = xn @ wn.T
    rows = np.arange(len(x))
    cos_y = cos[rows, col]
    theta = np.arccos(np.clip(cos_y, -1, 1))
    inside = theta + margin <= math.pi  # insightface's fallback cos - m sin m beyond
    target = np.where(inside, np.cos(theta + margin), cos_y - margin * math.sin(margin))
    d_target = np.where(inside, math.cos(margin) + math.sin(margin) * cos_y / np.sin(theta), 1.0)
    z = scale * cos
    z[rows, col] = scale * target
    peak = z.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(z - peak).sum(axis=1))
    target_dist = np.full(z.shape, label_smoothing / len(classes))
    target_dist[rows, col] += 1.0 - label_smoothing
    loss = np.mean(log_norm - (target_dist * z).sum(axis=1))
    g = np.exp(z - log_norm[:, None]) - target_dist
    g *= scale / len(x)
    g[rows, col] *= d_target  # now dL/dcos
    grad_x = (g @ wn - (g * cos).sum(axis=1, keepdims=True) * xn) / np.linalg.norm(x, axis=1, keepdims=True)
    grad_wk = (g.T @ xn - (g * cos).sum(axis=0)[:, None] * wn) / np.linalg.norm(wk, axis=1, keepdims=True)
    grad_w = np.zeros_like(w)
    grad_w[classes] = grad_wk
    return loss, grad_x, grad_w


def test_the_reference_gradient_is_the_derivative_of_the_reference_loss():
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(5, 6)), rng.normal(size=(7, 6))
    labels, classes, eps, smoothing = np.array([0, 3, 3, 6, 2]), np.arange(7), 1e-6, 0.1
    _, grad_x, grad_w = arcface_loss_and_grads(x, w, labels, classes, 16.0, 0.5, smoothing)
    for value, grad, name in ((x, grad_x, "x"), (w, grad_w, "w")):
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            up, down = value.copy(), value.copy()
            up[i] += eps
            down[i] -= eps
            args = {"x": x, "w": w, name: up}
            hi = arcface_loss_and_grads(args["x"], args["w"], labels, classes, 16.0, 0.5, smoothing)[0]
            args[name] = down
            lo = arcface_loss_and_grads(args["x"], args["w"], labels, classes, 16.0, 0.5, smoothing)[0]
            numeric[i] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------------------------------------------------
# The sharded loss, computed on two logical devices
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "probe.json"
    done = subprocess.run([sys.executable, "-m", "tests.train.sharded_probe", "loss", str(out)], capture_output=True,
                          text=True, env=env(), timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_shards_split_the_rows_as_arcface_torch_does():
    assert shard_bounds(11, 2) == [(0, 6), (6, 5)]
    assert shard_bounds(10, 4) == [(0, 3), (3, 3), (6, 2), (8, 2)]
    for n, r in ((1, 1), (7, 3), (1_000_003, 8), (5, 5)):
        bounds = shard_bounds(n, r)
        assert sum(rows for _, rows in bounds) == n
        assert all(start + rows == nxt for (start, rows), (nxt, _) in zip(bounds, bounds[1:], strict=False))
        assert max(rows for _, rows in bounds) - min(rows for _, rows in bounds) <= 1


def test_sample_rate_one_equals_the_full_softmax(probe):
    x, labels, w = np.array(probe["x"]), np.array(probe["labels"]), np.array(probe["centers"])
    loss, grad_x, grad_w = arcface_loss_and_grads(x, w, labels, np.arange(len(w)), probe["scale"], probe["margin"])
    full = probe["full"]
    print(f"loss: NumPy {loss:.8f}, sharded {full['loss']}, one device {probe['single']['loss']:.8f}")
    for got in (full, probe["single"]):  # the sharded loss, and today's one-device head, against NumPy
        assert np.asarray(got["loss"]) == pytest.approx(loss, rel=TOLERANCE)
        np.testing.assert_allclose(got["grad_x"], grad_x, atol=TOLERANCE)
        np.testing.assert_allclose(got["grad_w"], grad_w, atol=TOLERANCE)
    assert sorted(sum(full["sampled"], [])) == list(range(len(w))), "at sample_rate 1 every class is used"
    # Each replica's share adds up to the global batch's loss.
    assert sum(full["own_loss_sum"]) / len(x) == pytest.approx(loss, rel=TOLERANCE)


def test_label_smoothing_spreads_its_share_over_every_shards_classes(probe):
    x, labels, w = np.array(probe["x"]), np.array(probe["labels"]), np.array(probe["centers"])
    loss, grad_x, grad_w = arcface_loss_and_grads(x, w, labels, np.arange(len(w)), probe["scale"], probe["margin"],
                                                  label_smoothing=0.2)
    got = probe["smoothed"]
    assert np.asarray(got["loss"]) == pytest.approx(loss, rel=TOLERANCE)
    np.testing.assert_allclose(got["grad_x"], grad_x, atol=TOLERANCE)
    np.testing.assert_allclose(got["grad_w"], grad_w, atol=TOLERANCE)


def test_a_sample_holds_every_positive_and_its_loss_is_the_softmax_over_the_sample(probe):
    x, labels, w = np.array(probe["x"]), np.array(probe["labels"]), np.array(probe["sampled_centers"])
    shards = shard_bounds(len(w), 2)
    sizes = set()
    for step in probe["sampled"]:
        classes = np.array(sorted(sum(step["sampled"], [])))
        for (start, rows), own in zip(shards, step["sampled"], strict=True):
            assert all(start <= c < start + rows for c in own), "a shard samples only its own rows"
            # ceil(0.3 * rows) draws with replacement, de-duplicated, plus the positives
            assert len(set(own)) == len(own) <= math.ceil(0.3 * rows) + np.sum((labels >= start)
                                                                             & (labels < start + rows))
        assert set(labels) <= set(classes)
        sizes.add(len(classes))
        loss, grad_x, grad_w = arcface_loss_and_grads(x, w, labels, classes, probe["scale"], probe["margin"])
        assert np.asarray(step["loss"]) == pytest.approx(loss, rel=TOLERANCE)
        np.testing.assert_allclose(step["grad_x"], grad_x, atol=TOLERANCE)
        np.testing.assert_allclose(step["grad_w"], grad_w, atol=TOLERANCE)
        assert np.all(np.asarray(step["grad_w"])[np.setdiff1d(np.arange(len(w)), classes)] == 0)
    assert len(sizes) > 1 or min(sizes) < len(w), "the steps sampled; they did not use every class"
    many = probe["positives"]
    for sampled in many["sampled"]:
        assert set(many["labels"]) <= set(sum(sampled, []))


def test_each_replica_holds_half_the_centres(probe):
    memory = probe["memory"]
    whole = memory["n_classes"] * memory["dim"] * 4
    assert len(memory["mirrored"]) == len(memory["sharded"]) == 2
    print("bytes of centres per device:", memory)
    for device, held in memory["mirrored"].items():
        assert held == whole, "today (mirrored) every replica holds all centres"
        assert memory["sharded"][device] == whole // 2


# ---------------------------------------------------------------------------------------------------------
# Training with the trainer
# ---------------------------------------------------------------------------------------------------------
CENTERS_KEY = "model/_operations/3/centers/.ATTRIBUTES/VARIABLE_VALUE"  # the head's, sharded or not


@pytest.fixture(scope="module")
def sharded_run(tiny_manifest, tmp_path_factory):
    """Six epochs at sample_rate 0.5 on two logical devices, then one more resumed from the checkpoint."""
    tmp = tmp_path_factory.mktemp("sharded")
    tiny_manifest.write(str(tmp / "manifest.json"))
    done = subprocess.run([sys.executable, "-m", "tests.train.sharded_probe", "train", str(tmp / "out.json"),
                           str(tmp / "manifest.json"), str(tmp / "run")], capture_output=True, text=True,
                          env=env(), timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Partial-FC across replicas: 2-2 of the 4 class centres on each replica" in done.stdout
    assert "resuming from ckpt-18 at epoch 7" in done.stdout
    return tmp, json.loads((tmp / "out.json").read_text())


@pytest.mark.slow
def test_training_on_two_replicas_learns_saves_and_resumes(sharded_run, tiny_manifest):
    import tensorflow as tf

    from arcface import artifacts
    from arcface.train import train
    from tests.train.conftest import tiny_config

    tmp, out = sharded_run
    losses = [h["loss"] for h in out["history"]]
    print("sharded Partial-FC, 2 replicas, loss per epoch:", [round(x, 3) for x in losses])
    assert out["replicas"] == 2 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] and min(losses[-3:]) < 0.75 * losses[0], losses
    assert [h["epoch"] for h in out["resumed"]] == list(range(1, 8)) and out["resumed_steps"] == 21
    assert np.isfinite(out["mixed"][0]["loss"])

    run = tmp / "run"
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    saved = np.asarray(tf.train.load_variable(latest, CENTERS_KEY))
    assert saved.shape == (4, 16), "the checkpoint holds every class's centre, in one tensor"
    model = artifacts.load_keras(run / artifacts.TRAINING_MODEL_FILE)
    np.testing.assert_array_equal(model.get_layer("head").centers.numpy(), saved)
    embedding = artifacts.load_keras(run / artifacts.EMBEDDING_MODEL_FILE)
    vectors = embedding(np.zeros((2, 48, 48, 3), np.float32)).numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert (run / "best" / artifacts.EMBEDDING_MODEL_FILE).is_file()

    # The checkpoint of two shards resumes on one device (this process): one matrix, sliced on the way in.
    one = train(tiny_config(run, sample_rate=0.5, epochs=8, lr=0.1, steps_per_epoch=3, embedding_size=16),
                tiny_manifest, verbose=0)
    assert one.epochs_completed == 8 and one.steps == 24 and np.isfinite(one.history[-1]["loss"])


@pytest.mark.slow
def test_the_trainer_holds_half_the_centres_on_each_replica(sharded_run):
    memory = sharded_run[1]["memory"]
    sharded, mirrored = memory["0.5"], memory["1.0"]
    print("bytes per device:", json.dumps(memory, indent=1))
    assert len(sharded["centers"]) == 2
    for device, held in mirrored["centers"].items():
        assert held == 4 * 16 * 4
        assert sharded["centers"][device] == held // 2
        # all variables: the half of the centres, and the momentum the full softmax keeps for all of them
        assert mirrored["all"][device] - sharded["all"][device] == held // 2 + held
