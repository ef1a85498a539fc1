"""The precision policy a run uses: auto by the CPU's flags or the GPU's compute capability, explicit values as asked."""

from __future__ import annotations

import pytest

from arcface import precision
from arcface.precision import Device, choose

# Two processors as /proc/cpuinfo lists them (cut short): a Sapphire Rapids with AMX and AVX512-BF16, and an
# older Skylake server with AVX-512 but no bfloat16 instructions.
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512dq avx512vl
"""


def cpu(cpuinfo: str) -> Device:
    return Device("CPU", precision.cpu_name(cpuinfo), flags=precision.cpu_flags(cpuinfo))


def gpu(name: str, cc: tuple[int, int] | None) -> Device:
    return Device("GPU", name, compute_capability=cc)


def test_cpuinfo_flags_and_name_are_read():
    assert {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"} <= precision.cpu_flags(SAPPHIRE_RAPIDS)
    assert "avx512_bf16" not in precision.cpu_flags(SKYLAKE)
    assert precision.cpu_name(SKYLAKE) == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert precision.cpu_flags("") == frozenset()  # no /proc/cpuinfo: a CPU without the flags
    assert cpu(SAPPHIRE_RAPIDS).describe()["flags"] == {"avx512f": True, "avx512_bf16": True, "amx_tile": True,
                                                        "amx_bf16": True}


def test_auto_on_a_cpu_with_bfloat16_instructions_is_mixed_bfloat16():
    choice = choose("auto", [cpu(SAPPHIRE_RAPIDS)])
    assert (choice.policy, choice.loss_scaling) == ("mixed_bfloat16", False)
    assert "avx512_bf16" in choice.reason and "amx_bf16" in choice.reason
    only_amx = Device("CPU", "x", flags=frozenset({"avx512f", "amx_bf16"}))
    assert choose("auto", [only_amx]).policy == "mixed_bfloat16"


def test_auto_keeps_mobilefacenet_in_float32_on_a_cpu_but_not_on_a_gpu():
    """Its whole step measured 24.6 img/s in bfloat16 against 36.4 in float32 on this project's AMX CPU."""
    choice = choose("auto", [cpu(SAPPHIRE_RAPIDS)], backbone="MobileFaceNet")
    assert choice.policy == "float32" and "MobileFaceNet" in choice.reason
    assert choose("auto", [cpu(SAPPHIRE_RAPIDS)], backbone="ResNet50").policy == "mixed_bfloat16"
    assert choose("auto", [gpu("NVIDIA A100", (8, 0))], backbone="MobileFaceNet").policy == "mixed_bfloat16"
    assert choose("mixed_bfloat16", [cpu(SAPPHIRE_RAPIDS)], backbone="MobileFaceNet").policy == "mixed_bfloat16"


def test_auto_on_a_cpu_without_them_is_float32():
    choice = choose("auto", [cpu(SKYLAKE)])
    assert (choice.policy, choice.loss_scaling) == ("float32", False)
    assert "without bfloat16" in choice.reason


@pytest.mark.parametrize(("cc", "policy", "loss_scaling"), [
    ((8, 0), "mixed_bfloat16", False),  # A100
    ((9, 0), "mixed_bfloat16", False),  # H100
    ((7, 0), "mixed_float16", True),  # V100
    ((7, 5), "mixed_float16", True),  # T4
    ((6, 1), "float32", False),  # P40: no tensor cores
    (None, "float32", False),  # a GPU that reports no compute capability
])
def test_auto_on_gpus_by_compute_capability(cc, policy, loss_scaling):
    choice = choose("auto", [gpu("NVIDIA test", cc)])
    assert (choice.policy, choice.loss_scaling) == (policy, loss_scaling)
    if cc:
        assert f"{cc[0]}.{cc[1]}" in choice.reason


def test_auto_with_several_gpus_follows_the_oldest_and_ignores_the_cpu():
    choice = choose("auto", [gpu("NVIDIA A100", (8, 0)), gpu("Tesla V100", (7, 0)), cpu(SAPPHIRE_RAPIDS)])
    assert choice.policy == "mixed_float16" and "7.0" in choice.reason


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("device", [cpu(SKYLAKE), cpu(SAPPHIRE_RAPIDS), gpu("Tesla V100", (7, 0)),
                                    gpu("NVIDIA A100", (8, 0))])
def test_an_explicit_policy_is_used_as_asked(policy, device):
    choice = choose(policy, [device])
    assert (choice.policy, choice.requested, choice.loss_scaling) == (policy, policy, policy == "mixed_float16")
    assert ("emulate float16" in choice.reason) == (policy == "mixed_float16" and device.kind == "CPU")


def test_an_unknown_value_is_refused():
    with pytest.raises(ValueError, match="'bfloat16' is unknown; choose one of: float32, mixed_float16, "
                                         "mixed_bfloat16, auto"):
        choose("bfloat16", [cpu(SKYLAKE)])


def test_local_devices_reads_the_injected_cpuinfo():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("with a GPU the GPUs are the devices, not the CPU")
    (device,) = precision.local_devices(read=lambda: SKYLAKE)
    assert device.kind == "CPU" and device.name.startswith("Intel(R) Xeon(R) Gold 6148")
    assert choose("auto", precision.local_devices(read=lambda: SAPPHIRE_RAPIDS)).policy == "mixed_bfloat16"
    assert choose("auto", precision.local_devices(read=lambda: SKYLAKE)).policy == "float32"
