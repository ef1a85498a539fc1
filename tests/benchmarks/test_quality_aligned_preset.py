"""A preset that aligns (configs/lfw_cpu.yaml does) is scored on what it trained on: its closed-set figures come
from the aligned validation faces, not from the photos as validated."""

from __future__ import annotations

import json

import pytest

BENCHMARK = "bench_quality"

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_an_aligning_preset_is_evaluated_on_its_aligned_manifest(bench, shared_faces, tmp_path):
    bench.main(["--dataset", "orl", "--variants", "preset", "--budget_minutes", "1", "--workdir", str(tmp_path),
                "--set", "align=mtcnn", "--set", "center_crop=1.0", "--set", "epochs=1", "--set", "image_size=64",
                "--set", "embedding_size=128"])

    data = json.loads((tmp_path / "eval" / "preset" / "metrics.json").read_text())["data"]
    trained_on = json.loads((tmp_path / "models" / "preset" / "metadata.json").read_text())["manifest_sha256"]
    assert data["manifest_sha256"] == trained_on, "the closed set was scored on other images than the model's"
    assert (tmp_path / "aligned" / "preset" / "manifest.json").is_file(), "the preset did not align"
