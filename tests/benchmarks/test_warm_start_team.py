"""The warm-start benchmark's team: per person, disjoint photos train, validate and are held out for the pairs;
people with too few photos are not on the team, and nobody's held-out photos outnumber the cap."""

from __future__ import annotations

import pytest

BENCHMARK = "bench_warm_start"


@pytest.fixture
def lfw_like(tmp_path, bench, monkeypatch):
    """People with 3 to 40 photos, named as LFW names them, where the benchmark looks for LFW."""
    sizes = {f"Person_{i:02d}": n for i, n in enumerate((3, 9, 10, 11, 12, 16, 40))}
    for name, n in sizes.items():
        (tmp_path / "lfw_deepfunneled" / name).mkdir(parents=True)
        for k in range(1, n + 1):
            (tmp_path / "lfw_deepfunneled" / name / f"{name}_{k:04d}.jpg").write_bytes(b"")
    monkeypatch.setattr(bench, "SHARED", tmp_path)
    return sizes


def test_lfw_team_takes_people_with_ten_photos_and_caps_the_held_out_ones(bench, lfw_like):
    train, validation, held = bench.team_split("lfw", seed=3)
    assert set(train) == set(validation) == set(held) == {n for n, k in lfw_like.items() if k >= 10}
    for name in train:
        photos = [*train[name], *validation[name], *held[name]]
        assert len(photos) == len(set(photos))  # nobody's photo is in two roles
        assert all(p.parent.name == name for p in photos)
        assert (len(train[name]), len(validation[name])) == (5, 1)
        assert len(held[name]) == min(lfw_like[name] - 6, 6)


def test_the_split_is_drawn_by_the_seed(bench, lfw_like):
    assert bench.team_split("lfw", seed=3) == bench.team_split("lfw", seed=3)
    assert bench.team_split("lfw", seed=3)[0] != bench.team_split("lfw", seed=4)[0]
