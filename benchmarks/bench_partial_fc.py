"""Partial-FC head+loss step time: today's one-device path against the centres sharded over two replicas.

    nice -n 5 python benchmarks/bench_partial_fc.py --out benchmarks/results/partial_fc_sharded_cpu.json

One step is what the trainer does after the backbone: sample the centres, cosines, margin, cross-entropy, the
gradient with respect to the embeddings (what the backbone would get) and to the sampled centres, and the sparse
SGD update of those rows. The embeddings are random (--batch x --dim), so the backbone's cost is left out.
"one device" is MarginHead.sample_centers on one device; "sharded" is arcface.models.partial_fc on two
logical CPU devices (MirroredStrategy), each holding half the centres and seeing the all-gathered batch.

The two logical devices are carved out of the same CPU: they share its cores, so the sharded figure shows
what sharding costs in collectives and bookkeeping, not a speed-up (that needs two real devices). Each figure
is the median of --repeats steps after --warmup untimed ones; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def setup(devices: int):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def time_steps(step, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()  # returns a float: the step has finished
        times.append(time.perf_counter() - t0)
    return {"median_step_s": statistics.median(times), "min_step_s": min(times), "max_step_s": max(times),
            "repeats": repeats}


def one_device_step(n_classes: int, x, labels, sample_rate: float, lr: float = 0.1):
    """The trainer's single-device Partial-FC path (Trainer._make_train_step), without backbone and decay."""
    import tensorflow as tf

    from arcface.models import MarginHead
    from arcface.models.partial_fc import sparse_sgd

    with tf.device("/CPU:0"):
        head = MarginHead(n_classes, sample_rate=sample_rate)
        head.build([(None, int(x.shape[-1])), (None,)])

    @tf.function
    def step(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            index, targets = head.sample_centers(labels)
            cos_theta = head.cosine(x, tf.gather(head.centers.value, index))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                targets, head.logits(cos_theta, targets)))
        grad_x, grad_w = tape.gradient(loss, [x, head.centers.value])
        sparse_sgd(head.centers.value, grad_w, lr)
        return loss + 0.0 * tf.reduce_sum(grad_x)

    centre_bytes = {head.centers.value.device: n_classes * int(x.shape[-1]) * 4}
    return head, (lambda: float(step(x, labels))), centre_bytes


def sharded_step(strategy, n_classes: int, x, labels, sample_rate: float, lr: float = 0.1):
    import tensorflow as tf

    from arcface.models import MarginHead
    from arcface.models.partial_fc import ShardedPartialFC, sharded_centers, sparse_sgd

    head = MarginHead(n_classes, sample_rate=sample_rate, sharded_centers=sharded_centers(
        n_classes, int(x.shape[-1]), strategy.extended.worker_devices))
    head.build([(None, int(x.shape[-1])), (None,)])
    pfc, replicas = ShardedPartialFC(head), strategy.num_replicas_in_sync
    share = int(x.shape[0]) // replicas
    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: (x[ctx.replica_id_in_sync_group * share:][:share],
                     labels[ctx.replica_id_in_sync_group * share:][:share]))

    def replica(inputs):
        features, own = inputs
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = pfc(features, own)
            loss = out.loss_sum / int(x.shape[0])
        grad_x, grad_w = tape.gradient(loss, [features, out.variable])
        sparse_sgd(out.variable, grad_w, lr)
        return loss + 0.0 * tf.reduce_sum(grad_x)

    step = tf.function(lambda v: strategy.run(replica, args=(v,)))
    centre_bytes = {v.device: int(v.shape.num_elements()) * 4 for v in head.centers.variables}
    return head, (lambda: float(strategy.experimental_local_results(step(inputs))[0])), centre_bytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="1000,1000000", help="comma-separated numbers of identities")
    parser.add_argument("--sample_rate", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--replicas", type=int, default=2, help="logical CPU devices for the sharded path")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    strategy = setup(args.replicas)
    import numpy as np
    import tensorflow as tf

    from arcface import __version__

    rng = np.random.default_rng(0)
    result = {"benchmark": "partial_fc_sharded", "package_version": __version__, "tensorflow": tf.__version__,
              "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
                        f"{args.replicas} logical devices sharing them for the sharded path",
              "command": " ".join(["python", *sys.argv]), "sample_rate": args.sample_rate, "batch": args.batch,
              "dim": args.dim, "replicas": args.replicas, "warmup": args.warmup, "classes": {}}
    for n_classes in (int(c) for c in args.classes.split(",")):
        with tf.device("/CPU:0"):
            x = tf.constant(rng.normal(size=(args.batch, args.dim)), tf.float32)
            labels = tf.constant(rng.integers(0, n_classes, args.batch), tf.int32)
        figures = {}
        for name in ("one_device", "sharded"):
            head, step, centre_bytes = (one_device_step(n_classes, x, labels, args.sample_rate) if name == "one_device"
                                        else sharded_step(strategy, n_classes, x, labels, args.sample_rate))
            figures[name] = {**time_steps(step, args.warmup, args.repeats), "centre_bytes_per_device": centre_bytes}
            del head, step  # the next one's centres (2 GB at 1e6 x 512) would otherwise sit beside these
            print(f"{n_classes} identities, {name}: {figures[name]['median_step_s'] * 1e3:.1f} ms/step",
                  file=sys.stderr)
        figures["sharded_vs_one_device"] = figures["sharded"]["median_step_s"] / figures["one_device"]["median_step_s"]
        result["classes"][str(n_classes)] = figures
    result["load_average_before"] = list(load_before)
    result["load_average_after"] = list(os.getloadavg())

    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
