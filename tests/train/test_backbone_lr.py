"""--backbone_lr_scale: the backbone learns at a fraction of --lr, the head at --lr (SGD).

Reference: the same first step at scale 1 from the same weights and batch. With SGD the first update is
-lr * gradient (the momentum starts at zero), so at scale k the backbone moves k times as far and the head as far.
"""

from __future__ import annotations

import numpy as np
import pytest

from arcface.config import ConfigError
from arcface.train import Trainer
from tests.train.conftest import tiny_config


def first_step_moves(tiny_manifest, tmp_path, scale: float) -> tuple[list, list]:
    trainer = Trainer(tiny_config(tmp_path / f"scale{scale}", backbone_lr_scale=scale, augment=False),
                      tiny_manifest, verbose=0)
    backbone = [v.numpy() for v in trainer.backbone.trainable_variables]
    head = [w.copy() for w in trainer.head.get_weights()]
    images, labels = next(iter(trainer._epoch_batches(0, 0)))
    trainer._train_step(images, labels)
    return ([v.numpy() - b for v, b in zip(trainer.backbone.trainable_variables, backbone, strict=True)],
            [w - h for w, h in zip(trainer.head.get_weights(), head, strict=True)])


def test_the_backbone_moves_by_the_scale_and_the_head_as_before(tiny_manifest, tmp_path):
    full_backbone, full_head = first_step_moves(tiny_manifest, tmp_path, 1.0)
    quarter_backbone, quarter_head = first_step_moves(tiny_manifest, tmp_path, 0.25)
    frozen_backbone, _ = first_step_moves(tiny_manifest, tmp_path, 0.0)
    assert max(np.abs(d).max() for d in full_backbone) > 1e-6  # it did move at scale 1
    for full, quarter, frozen in zip(full_backbone, quarter_backbone, frozen_backbone, strict=True):
        np.testing.assert_allclose(quarter, 0.25 * full, rtol=1e-3, atol=2e-7)  # float32 round-off of w - w0
        assert not frozen.any()
    for full, quarter in zip(full_head, quarter_head, strict=True):
        np.testing.assert_allclose(quarter, full, rtol=1e-3, atol=2e-7)


def test_only_sgd_scales_the_backbone(tmp_path):
    with pytest.raises(ConfigError, match=r"backbone_lr_scale.*--optimizer=SGD only"):
        tiny_config(tmp_path, backbone_lr_scale=0.1, optimizer="Adam")
