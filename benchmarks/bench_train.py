"""Training speed: images/s per backbone, and Partial-FC step time with 1e3 vs 1e6 identities.

    python benchmarks/bench_train.py --out benchmarks/results/train_cpu.json
    python benchmarks/bench_train.py --backbones ResNet50 --batch_size 128 --precision auto   # on a GPU
    python benchmarks/bench_train.py --compare-precisions --out benchmarks/results/precision_cpu.json

Each figure is the median over --steps timed steps after --warmup untimed ones, on synthetic normalized images
(the input pipeline is measured separately by bench_data.py, so this isolates the model's consumption).

--compare-precisions times the whole training step (backbone, margin head, update) of each backbone (default
ResNet18, ResNet50, MobileFaceNet) under float32 and under the mixed policy ``--precision=auto`` picks on this
device, side by side; the JSON records the device's features that decide it (CPU flags, GPU name and compute
capability). Partial-FC is not timed in that mode.

--untuned times the step without the tuning of issue #20 (benchmarks/results/train_step_tuning_cpu.json): the
figures of train_precisions_cpu.json before it were taken that way.

--ab SWITCH times one switch of arcface.train.TUNING off against on (``--backbones`` as BACKBONE:POLICY, e.g.
``MobileFaceNet:mixed_bfloat16,ResNet50:mixed_bfloat16``): both steps built side by side in one process and
timed in alternating rounds of --steps steps (order reversed every other round), so load that comes and goes
hits both; the figure is the median of the per-round ratios, off time / on time.

--against_reference times our whole step against insightface's reference trainer's (arcface_torch's
get_model(), PartialFC_V2 and CombinedMarginLoss, its SGD and backbone clip; reference_probe_torch.py --speed) in
alternating rounds: ours in this process, the reference in --reference_python, a Python that has PyTorch, with
--arcface_torch its recognition/arcface_torch folder. Both run the same recipe (ArcFace s=64, m=0.5, 1,000
classes, SGD momentum 0.9, weight decay 5e-4, backbone gradients clipped to 5) on a synthetic batch; ours under
the --precision policy, the reference's backbone under torch.autocast("cpu", bfloat16) when that policy is
bfloat16 (channels-last with --reference_channels_last). The figure is the median of the per-round ratios,
reference time / our time. Once after the rounds the reference's backbone alone is timed too (forward, backward
and its update, no head: issue #20 quotes the reference that way).

--profile runs the TensorFlow profiler over --steps steps of each backbone (after --warmup) and reports where the
op time goes: by kind (convolutions forward, input gradient and filter gradient; BatchNorm; PReLU; the rest) and
the op types that cost most. Op time is summed over TensorFlow's inter-op threads, which run ops side by side, so
it exceeds the step's wall time; shares are of op time.
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


def _trainer(config):
    from arcface.data import Manifest, ManifestRow
    from arcface.train import Trainer

    # The trainer only needs class names and a training-set size from the manifest to build its step.
    rows = [ManifestRow(path=f"{i}.jpg", identity=f"id{i % config.n_classes}", split="train", width=112,
                        height=112, sha256=f"{i:064x}") for i in range(config.batch_size)]
    manifest = Manifest(rows=rows, roots={"train": "/nonexistent", "validation": "/nonexistent"},
                        class_names=[f"id{i}" for i in range(config.n_classes)])
    return Trainer(config, manifest, verbose=0)


def _synthetic_batch(config):
    """One seeded batch of normalized images and labels: the step is timed on the same batch every time."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (config.batch_size, config.image_size, config.image_size, 3)),
                         tf.float32)
    return images, tf.constant(rng.integers(0, config.n_classes, config.batch_size), tf.int32)


def _run_steps(trainer, batch, steps: int) -> tuple[list[float], float | None]:
    """``steps`` training steps on ``batch``: (seconds each, the last loss); float() waits for each step to end."""
    times, loss = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = float(trainer._train_step(*batch)[0])
        times.append(time.perf_counter() - t0)
    return times, loss


def device_features() -> dict:
    """What the precision choice reads: this CPU's relevant flags, and every GPU's name and compute capability."""
    from arcface import precision

    cpuinfo = precision.read_cpuinfo()
    cpu = precision.Device("CPU", f"{precision.cpu_name(cpuinfo)} ({os.cpu_count()} cores)",
                           flags=precision.cpu_flags(cpuinfo))
    gpus = [d for d in precision.local_devices() if d.kind == "GPU"]
    return {"cpu": cpu.describe(), "gpus": [g.describe() for g in gpus]}


def compare_precisions(names, base: dict, warmup: int, steps: int) -> dict:
    """float32 and the auto-chosen mixed policy, backbone by backbone (the same config otherwise)."""
    from arcface import precision
    from arcface.config import TrainConfig

    auto = precision.choose("auto", precision.local_devices())
    policies = ["float32"] + ([auto.policy] if auto.policy != "float32" else [])
    if len(policies) == 1:
        print(f"auto chose float32 here ({auto.reason}): only float32 is timed", file=sys.stderr)
    out: dict = {"auto": auto.to_dict(), "policies": policies, "backbones": {}}
    for name in names:
        figures = {}
        for policy in policies:
            config = TrainConfig(**{**base, "backbone": name, "precision": policy, "mixed_precision": False})
            figures[policy] = time_steps(config, warmup, steps)
            print(f"{name} {policy}: {figures[policy]['images_per_second']:.1f} img/s", file=sys.stderr)
        if len(policies) == 2:
            figures[f"speedup_{policies[1]}_vs_float32"] = (figures["float32"]["median_step_s"]
                                                            / figures[policies[1]]["median_step_s"])
        out["backbones"][name] = figures
    return out


def time_steps(config, warmup: int, steps: int) -> dict:
    trainer = _trainer(config)
    batch = _synthetic_batch(config)
    _run_steps(trainer, batch, warmup)
    times, last_loss = _run_steps(trainer, batch, steps)
    median = statistics.median(times)
    return {"median_step_s": median, "images_per_second": config.batch_size / median,
            "steps_timed": steps, "min_step_s": min(times), "max_step_s": max(times),
            "policy": trainer.precision.policy, "last_loss": last_loss}


def ab_switch(switch: str, cases: list[str], base: dict, warmup: int, steps: int, rounds: int) -> dict:
    """One TUNING switch off vs on, per BACKBONE:POLICY case, in alternating rounds (see the module's text)."""
    from arcface import train as train_module
    from arcface.config import TrainConfig

    if switch not in train_module.TUNING:
        raise SystemExit(f"--ab {switch}: not a tuning switch; known: {', '.join(train_module.TUNING)}")
    out = {"switch": switch, "rounds": rounds, "steps_per_round": steps, "cases": {}}
    for case in cases:
        backbone, _, policy = case.partition(":")
        config = TrainConfig(**{**base, "backbone": backbone, "precision": policy or "float32",
                                "mixed_precision": False})
        trainers = {}
        for on in (False, True):
            setattr(train_module, switch, on)  # read when the trainer builds its model
            trainers[on] = _trainer(config)
        batch = _synthetic_batch(config)
        for trainer in trainers.values():
            _run_steps(trainer, batch, warmup)
        ratios, medians, loads = [], {False: [], True: []}, []
        for r in range(rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                medians[on].append(statistics.median(_run_steps(trainers[on], batch, steps)[0]))
            ratios.append(medians[False][-1] / medians[True][-1])
            loads.append(os.getloadavg()[0])
        out["cases"][case] = {
            "policy": trainers[True].precision.policy, "speedup_median": statistics.median(ratios),
            "speedup_min": min(ratios), "speedup_max": max(ratios),
            "off_images_per_second": config.batch_size / statistics.median(medians[False]),
            "on_images_per_second": config.batch_size / statistics.median(medians[True]),
            "load_average_1min": {"min": min(loads), "max": max(loads)}}
        print(f"{case} {switch}: x{out['cases'][case]['speedup_median']:.2f}", file=sys.stderr)
        del trainers
    setattr(train_module, switch, True)
    return out


def _op_kind(name: str) -> str | None:
    """The kind of one profiled op, from its TensorFlow name ("scope/.../op:OpType"); None for the executor's own
    spans ("ExecutorState::Process"), which enclose the ops."""
    if name.count(":") != 1:
        return None
    scope, _, op_type = name.partition(":")
    if "Conv2DBackpropFilter" in op_type or "NativeBackpropFilter" in op_type:
        return "convolution, filter gradient"
    if "BackpropInput" in op_type:
        return "convolution, input gradient"
    if "conv2d" in op_type.lower() or "MatMul" in op_type:
        return "convolution/matmul, forward"
    if "BatchNorm" in op_type or "_bn" in scope:
        return "batchnorm"
    if "prelu" in scope:
        return "prelu"
    return "other (update, residual sums, decay, head, casts)"


def profile_steps(config, warmup: int, steps: int) -> dict:
    """Op time by kind over ``steps`` profiled training steps (see the module's text)."""
    import collections
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    trainer = _trainer(config)
    batch = _synthetic_batch(config)
    _run_steps(trainer, batch, warmup)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        wall = statistics.mean(_run_steps(trainer, batch, steps)[0])
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    kinds, op_types = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                kind = _op_kind(name)
                if kind is None:
                    continue
                seconds = event.duration_ps / 1e12 / steps
                kinds[kind] += seconds
                op_types[name.partition(":")[2]] += seconds
    total = sum(kinds.values())
    return {"policy": trainer.precision.policy, "wall_step_s": wall, "op_time_s_per_step": total,
            "share": {k: round(v / total, 3) for k, v in kinds.most_common()},
            "top_op_types_ms_per_step": {k: round(v * 1e3, 1) for k, v in op_types.most_common(12)}}


REFERENCE_NETWORKS = {"ResNet18": "r18", "ResNet34": "r34", "ResNet50": "r50", "ResNet100": "r100",
                      "MobileFaceNet": "mbf"}


def against_reference(names, base: dict, warmup: int, steps: int, rounds: int, python: str,
                      arcface_torch: str, channels_last: bool = False) -> dict:
    """Our step and the reference trainer's, backbone by backbone, in alternating rounds (see the module's text)."""
    import subprocess

    from arcface.config import TrainConfig

    unknown = [n for n in names if n not in REFERENCE_NETWORKS]
    if unknown:
        raise SystemExit(f"--against_reference: no reference network for {', '.join(unknown)}; "
                         f"known: {', '.join(REFERENCE_NETWORKS)}")
    recipe = dict(margin="arcface", enhance=64.0, penalty=0.5, optimizer="SGD", momentum=0.9, decay=5e-4,
                  backbone_clipnorm=5.0, mixed_precision=False)
    trainers = {name: _trainer(TrainConfig(**{**base, **recipe, "backbone": name})) for name in names}
    policies = {name: trainer.precision.policy for name, trainer in trainers.items()}
    if any(p not in ("float32", "mixed_bfloat16") for p in policies.values()):
        raise SystemExit(f"--against_reference compares float32 or bfloat16 steps, not {policies}")
    reference_precision = "bfloat16" if "mixed_bfloat16" in policies.values() else "float32"
    batch = _synthetic_batch(trainers[names[0]].config)
    for trainer in trainers.values():
        _run_steps(trainer, batch, warmup)
    command = [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_probe_torch.py"),
               "--arcface_torch", arcface_torch, "--speed", ",".join(REFERENCE_NETWORKS[n] for n in names),
               "--precision", reference_precision, "--batch_size", str(base["batch_size"]), "--classes",
               str(base["n_classes"]), "--warmup", str(warmup), "--steps", str(steps)]
    if channels_last:
        command.append("--channels_last")
    ours: dict = {n: [] for n in names}
    theirs: dict = {n: [] for n in names}
    loads = []
    for r in range(rounds):
        for side in (("ours", "reference") if r % 2 == 0 else ("reference", "ours")):
            if side == "ours":
                for name, trainer in trainers.items():
                    ours[name].append(statistics.median(_run_steps(trainer, batch, steps)[0]))
            else:
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"the reference trainer failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
                figures = json.loads(done.stdout)["networks"]
                for name in names:
                    theirs[name].append(figures[REFERENCE_NETWORKS[name]]["median_step_s"])
        loads.append(os.getloadavg()[0])
    done = subprocess.run(command + ["--backbone_only"], capture_output=True, text=True)
    alone = json.loads(done.stdout)["networks"] if done.returncode == 0 else {}
    out = {"command": command, "rounds": rounds, "steps_per_round": steps, "recipe": recipe,
           "reference_precision": reference_precision, "reference_channels_last": channels_last,
           "load_average_1min": {"min": min(loads), "max": max(loads)}, "backbones": {}}
    for name in names:
        ratios = [t / o for t, o in zip(theirs[name], ours[name], strict=True)]
        out["backbones"][name] = {
            "policy": policies[name], "reference_network": REFERENCE_NETWORKS[name],
            "images_per_second": base["batch_size"] / statistics.median(ours[name]),
            "reference_images_per_second": base["batch_size"] / statistics.median(theirs[name]),
            "speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "step_s": ours[name], "reference_step_s": theirs[name],
            "reference_backbone_only_images_per_second": alone.get(REFERENCE_NETWORKS[name], {}).get(
                "images_per_second")}
        print(f"{name}: x{out['backbones'][name]['speedup_median']:.2f} the reference", file=sys.stderr)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=None,
                        help="comma-separated (default: MobileFaceNet,ResNet18,ResNet34,ResNet50,ResNet100,VGG16; "
                             "with --compare-precisions: ResNet18,ResNet50,MobileFaceNet)")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_float16", "mixed_bfloat16",
                                                                    "auto"))
    parser.add_argument("--mixed_precision", action="store_true", help="the same as --precision auto")
    parser.add_argument("--compare-precisions", dest="compare_precisions", action="store_true",
                        help="float32 and the auto mixed policy side by side (see above)")
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--untuned", action="store_true",
                        help="time the step as it was before issue #20's tuning (Keras' own BatchNormalization "
                             "and PReLU, Keras' SGD update; see arcface.train.TUNING)")
    parser.add_argument("--ab", metavar="SWITCH", help="one TUNING switch off vs on (see above)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="with --ab or --against_reference: alternating rounds of --steps steps")
    parser.add_argument("--profile", action="store_true", help="op time by kind over --steps steps (see above)")
    parser.add_argument("--against_reference", action="store_true", help="our step vs the reference's (see above)")
    parser.add_argument("--reference_python", default=sys.executable,
                        help="with --against_reference: a Python that has PyTorch")
    parser.add_argument("--arcface_torch", help="with --against_reference: insightface's recognition/arcface_torch")
    parser.add_argument("--reference_channels_last", action="store_true",
                        help="with --against_reference: the reference's backbone and batch channels-last")
    parser.add_argument("--partial_fc_backbone", default="TinyFaceNet",
                        help="small backbone for the 1e3 vs 1e6 identities comparison ('' to skip)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from arcface import __version__
    from arcface import train as train_module
    from arcface.config import TrainConfig

    if args.untuned:
        for switch in train_module.TUNING:
            setattr(train_module, switch, False)

    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
              else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})")
    requested = "auto" if args.mixed_precision else args.precision
    result = {"benchmark": "train", "package_version": __version__, "tensorflow": tf.__version__,
              "device": device, "device_features": device_features(), "image_size": args.image_size,
              "batch_size": args.batch_size, "jit_compile": args.jit_compile,
              "tuning": {switch: bool(getattr(train_module, switch)) for switch in train_module.TUNING},
              "load_average_at_start": os.getloadavg()}  # 1/5/15 min: what else was on the cores
    base = dict(n_classes=1000, image_size=args.image_size, batch_size=args.batch_size, dropout=0.0,
                precision=requested, jit_compile=args.jit_compile, save_path="/tmp/arcface-bench",
                warmup_epochs=0.0)
    if args.against_reference:
        if not args.arcface_torch:
            parser.error("--against_reference needs --arcface_torch (insightface's recognition/arcface_torch)")
        names = [n for n in (args.backbones or "ResNet18,ResNet50").split(",") if n]
        result["against_reference"] = against_reference(names, base, args.warmup, args.steps, args.rounds,
                                                        args.reference_python, args.arcface_torch,
                                                        args.reference_channels_last)
        args.partial_fc_backbone = ""
    elif args.profile:
        names = [n for n in (args.backbones or "ResNet50,MobileFaceNet").split(",") if n]
        result["profile"] = {name: profile_steps(TrainConfig(backbone=name, **base), args.warmup, args.steps)
                             for name in names}
        args.partial_fc_backbone = ""
    elif args.ab:
        cases = (args.backbones or "MobileFaceNet:mixed_bfloat16,ResNet50:mixed_bfloat16").split(",")
        result["ab"] = ab_switch(args.ab, [c for c in cases if c], base, args.warmup, args.steps, args.rounds)
        args.partial_fc_backbone = ""
    elif args.compare_precisions:
        names = (args.backbones if args.backbones is not None else "ResNet18,ResNet50,MobileFaceNet").split(",")
        result["precision_comparison"] = compare_precisions([n for n in names if n], base, args.warmup, args.steps)
        args.partial_fc_backbone = ""
    else:
        result.update(precision=requested, backbones={})
        names = (args.backbones if args.backbones is not None
                 else "MobileFaceNet,ResNet18,ResNet34,ResNet50,ResNet100,VGG16").split(",")
        for name in filter(None, names):
            figures = time_steps(TrainConfig(backbone=name, **base), args.warmup, args.steps)
            result["backbones"][name] = figures
            print(f"{name}: {figures['images_per_second']:.1f} img/s", file=sys.stderr)

    if args.partial_fc_backbone:
        pfc = {}
        for n_classes in (1_000, 1_000_000):
            config = TrainConfig(**{**base, "n_classes": n_classes, "backbone": args.partial_fc_backbone,
                                    "sample_rate": 0.1})
            pfc[str(n_classes)] = time_steps(config, args.warmup, args.steps)
            print(f"Partial-FC {n_classes} identities: {pfc[str(n_classes)]['median_step_s'] * 1e3:.1f} ms/step",
                  file=sys.stderr)
        pfc["ratio_1e6_vs_1e3"] = pfc["1000000"]["median_step_s"] / pfc["1000"]["median_step_s"]
        result["partial_fc"] = {"backbone": args.partial_fc_backbone, "sample_rate": 0.1, **pfc}

    result["load_average_at_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
