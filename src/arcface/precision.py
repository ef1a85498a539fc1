"""Which Keras precision policy a training run uses, and why.

``choose(requested, devices)`` is the whole decision; ``local_devices()`` describes this machine for it. The
module imports only the standard library at the top; TensorFlow and Keras are imported where they are needed.

``auto`` picks:

* ``mixed_bfloat16`` on GPUs of compute capability >= 8.0 (Ampere and later) and on CPUs with bfloat16
  instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo);
* ``mixed_float16`` (with loss scaling) on GPUs of compute capability 7.x (the first with float16 tensor cores);
* ``float32`` otherwise: a CPU without bfloat16 instructions (float16 would be emulated there, many times
  slower), a GPU older than 7.0 or one whose compute capability is not reported.

Only float16 needs loss scaling: bfloat16 has float32's exponent range, so small gradients do not underflow.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from arcface.choices import PRECISIONS as CHOICES

#: The CPU flags (as /proc/cpuinfo spells them) that matter to the choice and to the benchmark's record.
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"
#: Backbones that train slower in bfloat16 than in float32 on a CPU, so ``auto`` keeps them in float32 there:
#: measured whole training steps, benchmarks/results/train_precisions_cpu.json.
CPU_FLOAT32_BACKBONES = {
    "MobileFaceNet": "its depthwise convolutions gain nothing from AMX: 24.6 img/s in bfloat16 vs 36.4 in float32",
}


@dataclasses.dataclass(frozen=True)
class Device:
    """One device a run can train on: a CPU with its instruction flags, or a GPU with its compute capability."""

    kind: str  # "CPU" or "GPU"
    name: str = ""
    compute_capability: tuple[int, int] | None = None  # GPUs
    flags: frozenset[str] = frozenset()  # CPUs: the flags of /proc/cpuinfo

    def describe(self) -> dict[str, Any]:
        if self.kind == "GPU":
            cc = self.compute_capability
            return {"kind": "GPU", "name": self.name, "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None}
        return {"kind": "CPU", "name": self.name, "flags": {flag: flag in self.flags for flag in CPU_FLAGS}}


@dataclasses.dataclass(frozen=True)
class Choice:
    """The policy a run uses, what was asked for, and why."""

    policy: str
    requested: str
    reason: str

    @property
    def loss_scaling(self) -> bool:
        """float16 needs a LossScaleOptimizer; bfloat16 (float32's exponent range) and float32 do not."""
        return self.policy == "mixed_float16"

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "requested": self.requested, "reason": self.reason,
                "loss_scaling": self.loss_scaling}


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text; empty where there is none (not Linux), which reads as a CPU without the flags."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction flags of the first processor listed ('flags' on x86; 'Features' on ARM)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def local_devices(read: Callable[[], str] = read_cpuinfo) -> list[Device]:
    """The GPUs TensorFlow sees (name, compute capability), or, when there is none, this CPU and its flags."""
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001 - a device without details is treated as one of unknown capability
            details = {}
        cc = details.get("compute_capability")
        gpus.append(Device("GPU", str(details.get("device_name", gpu.name)),
                           tuple(int(x) for x in cc) if cc else None))
    if gpus:
        return gpus
    text = read()
    return [Device("CPU", f"{cpu_name(text)} ({os.cpu_count()} cores)", flags=cpu_flags(text))]


def choose(requested: str, devices: Sequence[Device] | Iterable[Device], backbone: str | None = None) -> Choice:
    """The policy for ``requested`` (one of :data:`CHOICES`) on ``devices``; the reason says why, in words.

    An explicit policy is used as asked (with a warning in the reason when float16 would run on a CPU);
    ``auto`` decides by the devices as the module docstring says, and keeps a ``backbone`` of
    :data:`CPU_FLOAT32_BACKBONES` in float32 on a CPU. With several GPUs the oldest decides.
    """
    if requested not in CHOICES:
        raise ValueError(f"precision {requested!r} is unknown; choose one of: {', '.join(CHOICES)}")
    devices = list(devices)
    gpus = [d for d in devices if d.kind == "GPU"]
    if requested != "auto":
        note = ""
        if requested == "mixed_float16" and not gpus:
            note = "; note: there is no GPU, and CPUs emulate float16, usually many times slower than float32"
        return Choice(requested, requested, f"--precision={requested} was asked for{note}")
    if gpus:
        capabilities = [d.compute_capability for d in gpus]
        names = ", ".join(sorted({d.name for d in gpus}))
        if any(cc is None for cc in capabilities):
            return Choice("float32", requested, f"auto: GPU {names} reports no compute capability; float32 is safe")
        oldest = min(capabilities)  # type: ignore[type-var]
        where = f"GPU {names}, compute capability {oldest[0]}.{oldest[1]}"
        if oldest >= (8, 0):
            return Choice("mixed_bfloat16", requested, f"auto: {where} (>= 8.0) computes bfloat16 natively")
        if oldest >= (7, 0):
            return Choice("mixed_float16", requested,
                          f"auto: {where} has float16 tensor cores but no bfloat16 (< 8.0); loss scaling on")
        return Choice("float32", requested, f"auto: {where} (< 7.0) has no tensor cores to gain from")
    flags = frozenset().union(*(d.flags for d in devices))
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if found and backbone in CPU_FLOAT32_BACKBONES:
        return Choice("float32", requested, f"auto: CPU with bfloat16 instructions ({', '.join(found)}), but "
                                            f"{backbone} trains faster in float32 here: {CPU_FLOAT32_BACKBONES[backbone]}")
    if found:
        return Choice("mixed_bfloat16", requested, f"auto: CPU with bfloat16 instructions ({', '.join(found)})")
    return Choice("float32", requested, "auto: CPU without bfloat16 instructions (avx512_bf16/amx_bf16); float16 "
                                        "would be emulated, so float32")


# ---------------------------------------------------------------------------------------------------------
# Saved models compute in float32
# ---------------------------------------------------------------------------------------------------------
def computes_in_float32(model) -> bool:
    """True when no layer of the model (nested models included) computes in another dtype."""
    def layers(layer):
        yield layer
        for inner in getattr(layer, "layers", ()):
            yield from layers(inner)

    return all(layer.compute_dtype == "float32" for layer in layers(model))


def _float32_policies(value: Any) -> Any:
    """A serialized model with every mixed DTypePolicy replaced by float32 (variables are float32 already)."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(value.get("config"), dict):
            if value["config"].get("name") in ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16"):
                return {**value, "config": {**value["config"], "name": "float32"}}
            return value
        return {key: _float32_policies(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_policies(item) for item in value]
    return value


def float32_model(model):
    """The same model, the same weights, computing in float32: what a model trained under a mixed policy is
    saved and exported as, so that every consumer (evaluation, export, serving) computes as it always did.
    A model that already computes in float32 is returned as it is."""
    if computes_in_float32(model):
        return model
    import keras

    # Here, not at the top: the config imports this module and must not load TensorFlow.
    from arcface.models import CUSTOM_OBJECTS

    config = _float32_policies(keras.saving.serialize_keras_object(model))
    # A functional model records no policy of its own: it takes the global one, which may be mixed here.
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        with keras.saving.custom_object_scope(CUSTOM_OBJECTS):
            copy = keras.saving.deserialize_keras_object(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    # Layer by layer, through each layer's get/set_weights: a layer may hold weights outside Keras' list (the
    # margin head's centres when sharded over replicas), which the model's flat list would leave out.
    for source, target in zip(model.layers, copy.layers, strict=True):
        target.set_weights(source.get_weights())
    return copy
