"""bench_train.py --profile: where a training step's op time goes, read from the TensorFlow profiler's trace."""

from __future__ import annotations

import pytest

BENCHMARK = "bench_train"


@pytest.mark.parametrize("name, kind", [
    # Names as the profiler reports them for the IResNets and MobileFaceNet (scope:op type).
    ("gradient_tape/ResNet50_1/stage4_block1_conv2_1/convolution/Conv2DBackpropFilter:_MklNativeConv2DBackpropFilter",
     "convolution, filter gradient"),
    ("gradient_tape/M_1/b_depthwise_dw_1/depthwise/DepthwiseConv2dNativeBackpropFilter:"
     "_MklNativeDepthwiseConv2dNativeBackpropFilter", "convolution, filter gradient"),
    ("gradient_tape/ResNet50_1/stem_conv_1/convolution/Conv2DBackpropInput:_MklNativeConv2DBackpropInput",
     "convolution, input gradient"),
    ("ResNet50_1/stage1_block1_conv1_1/convolution:_MklNativeConv2D", "convolution/matmul, forward"),
    ("M_1/b_depthwise_dw_1/depthwise:_MklNativeDepthwiseConv2dNative", "convolution/matmul, forward"),
    ("ResNet50_1/stem_bn_1/FusedBatchNormV3:_MklNativeFusedBatchNormV3", "batchnorm"),
    ("ResNet50_1/stage1_block1_prelu_1/SelectV2:SelectV2", "prelu"),
    ("gradient_tape/ResNet50_1/stage2_block3_prelu_1/Sum:Sum", "prelu"),
    ("SGD/AssignAddVariableOp_12:AssignAddVariableOp", "other (update, residual sums, decay, head, casts)"),
])
def test_op_kinds(bench, name, kind):
    assert bench._op_kind(name) == kind


def test_executor_spans_are_not_ops(bench):
    """The executor's span encloses every op it runs: counting it would double the op time."""
    assert bench._op_kind("ExecutorState::Process") is None


def test_profile_of_a_real_step(bench):
    """Three profiled TinyFaceNet steps: the trace is read, its convolutions are found in all three directions,
    and the op time it adds up per step agrees with the step's wall-clock time, measured by the clock and not
    from the trace: no more than every core busy for the whole step, and not a small fraction of it (the
    TinyFaceNet step is all ops). A unit slip (picoseconds, a missing division by the steps) or a trace read
    from the wrong lines lands far outside that band."""
    import os

    from arcface.config import TrainConfig

    config = TrainConfig(backbone="TinyFaceNet", n_classes=10, image_size=64, batch_size=8, dropout=0.0,
                         save_path="/tmp/arcface-bench-test", warmup_epochs=0.0)
    profile = bench.profile_steps(config, warmup=1, steps=3)
    wall, ops = profile["wall_step_s"], profile["op_time_s_per_step"]
    assert 0.25 * wall < ops < wall * (os.cpu_count() or 1), (ops, wall)
    assert {"convolution/matmul, forward", "convolution, input gradient",
            "convolution, filter gradient"} <= set(profile["share"])
    assert "Process" not in profile["top_op_types_ms_per_step"]
