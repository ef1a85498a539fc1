"""The quality benchmark's open-set split: no test identity is ever trained on, and training the small LFW
identities too leaves the held-out identities (and so the test pairs) as they were."""

from __future__ import annotations

import pytest

BENCHMARK = "bench_quality"


@pytest.fixture
def people(tmp_path):
    """40 identities with 1 to 8 images each (5 of every size), named as LFW names them."""
    sizes = {}
    for i in range(40):
        name, n = f"Person_{i:02d}", 1 + i % 8
        (tmp_path / name).mkdir()
        for k in range(1, n + 1):
            (tmp_path / name / f"{name}_{k:04d}.jpg").write_bytes(b"")
        sizes[name] = n
    return tmp_path, sizes


def _images(split):
    return {f.name for files in split.values() for f in files}


def test_lfw_split_holds_out_whole_identities(bench, people):
    root, sizes = people
    train, validation, test = bench.split_identities(root, "lfw", seed=42)
    assert not set(train) & set(test)
    assert {n for n, k in sizes.items() if k in (2, 3)} <= set(test)  # too few images to train, enough for pairs
    big = {n for n, k in sizes.items() if k >= 4}
    assert len(big & set(test)) == len(big) // 4 and set(train) == big - set(test)
    # One image of each trained identity with 5+ is kept back for validation, and only that one.
    assert set(validation) == {n for n in train if sizes[n] >= 5}
    assert all(len(train[n]) + len(validation.get(n, [])) == sizes[n] for n in train)
    assert not _images(train) & _images(validation)


@pytest.mark.parametrize("train_min_images", [2, 1])
def test_training_the_small_identities_keeps_the_held_out_quarter(bench, people, train_min_images):
    root, sizes = people
    _, _, standard_test = bench.split_identities(root, "lfw", seed=42)
    train, _, test = bench.split_identities(root, "lfw", seed=42, train_min_images=train_min_images)
    held_big = {n for n in standard_test if sizes[n] >= 4}
    assert set(test) == held_big
    assert set(train) == {n for n, k in sizes.items() if k >= train_min_images} - held_big
    assert not set(train) & set(test)
