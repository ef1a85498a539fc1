from __future__ import annotations

import shutil

import pytest

from arcface.config import TrainConfig


@pytest.fixture(scope="session")
def tiny_data(sample_dir, tmp_path_factory):
    """Four real ORL identities from the bundled sample: 28 training and 12 validation faces."""
    root = tmp_path_factory.mktemp("orl4")
    for split in ("train", "validation"):
        for identity in ("s1", "s2", "s3", "s4"):
            shutil.copytree(sample_dir / split / identity, root / split / identity)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_data, tmp_path_factory):
    from arcface.data import run_validation

    out = tmp_path_factory.mktemp("manifest")
    return run_validation(str(tiny_data / "train"), str(tiny_data / "validation"), str(out)).manifest


@pytest.fixture(scope="module")
def team_manifest(sample_dir, tmp_path_factory):
    """Four ORL people from the bundled sample, in their own order: the team the warm-start tests train on."""
    from arcface.data import run_validation

    root = tmp_path_factory.mktemp("team")
    for split in ("train", "validation"):
        for identity in ("s5", "s3", "s2", "s4"):
            shutil.copytree(sample_dir / split / identity, root / split / identity)
    return run_validation(str(root / "train"), str(root / "validation"), str(root / "out")).manifest


def tiny_config(save_path, **changes) -> TrainConfig:
    base = dict(n_classes=4, backbone="TinyFaceNet", image_size=48, embedding_size=32, batch_size=8, epochs=2,
                lr=0.05, enhance=16.0, penalty=0.3, dropout=0.0, warmup_epochs=0.0, save_path=str(save_path),
                seed=7)
    base.update(changes)
    return TrainConfig(**base).validate()
