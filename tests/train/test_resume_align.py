"""A restarted `arcface train` on photos reuses the crops it aligned before (issue #31): by sha256, from its own
align output in save_path, or from <checkpoint_dir>/align-cache when a retry writes into a new save_path."""

from __future__ import annotations

import logging
import re

import pytest

from arcface.data import align
from arcface.train import ALIGN_CACHE_DIR, train
from tests.train.conftest import tiny_config


class CountingDetector(align.MtcnnDetector):
    """The real MTCNN, counting the images it is asked to look at."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def detect(self, images):
        self.images += len(images)
        return super().detect(images)


@pytest.fixture
def detector(monkeypatch) -> CountingDetector:
    counting = CountingDetector()
    monkeypatch.setattr(align, "default_detector", lambda: counting)
    return counting


def photos_config(tiny_data, save_path, **changes):
    return tiny_config(save_path, align="mtcnn", epochs=1, embedding_size=16, train_data=str(tiny_data / "train"),
                       validation_data=str(tiny_data / "validation"), **changes)


def alignment_counts(caplog) -> list[tuple[int, int]]:
    """(aligned, reused) of every alignment logged so far."""
    return [(int(m[1]), int(m[2])) for m in (re.search(r"aligned (\d+) image\(s\), reused (\d+) from the cache",
                                                       r.getMessage()) for r in caplog.records) if m]


def test_a_restarted_run_reuses_every_crop_it_aligned(tiny_data, tmp_path, detector, caplog):
    caplog.set_level(logging.INFO, logger="arcface.align")
    config = photos_config(tiny_data, tmp_path / "run")
    first = train(config, verbose=0)
    photos = detector.images
    assert photos == 40 and alignment_counts(caplog) == [(40, 0)]  # 4 identities: 28 + 12 photos

    again = train(config, verbose=0)  # as after a kill: the same command, the same save_path
    assert detector.images == photos, "the restart ran the detector again"
    assert alignment_counts(caplog)[-1] == (0, 40)
    assert again.manifest_sha256 == first.manifest_sha256 and again.epochs_completed == 1


def test_a_retry_into_a_new_save_path_reuses_the_crops_beside_the_checkpoints(tiny_data, tmp_path, detector,
                                                                               caplog):
    caplog.set_level(logging.INFO, logger="arcface.align")
    pvc = tmp_path / "pvc"
    first = train(photos_config(tiny_data, tmp_path / "attempt-1", checkpoint_dir=str(pvc)), verbose=0)
    photos = detector.images

    retry = train(photos_config(tiny_data, tmp_path / "attempt-2", checkpoint_dir=str(pvc)), verbose=0)
    assert detector.images == photos, "the retry ran the detector again"
    assert alignment_counts(caplog) == [(40, 0), (0, 40)]
    assert retry.manifest_sha256 == first.manifest_sha256 and retry.epochs_completed == 1
    assert (pvc / ALIGN_CACHE_DIR / "alignment.json").is_file()
