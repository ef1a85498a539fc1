"""make_dataset: shapes, labels, determinism, augmentation only when training, EXIF orientation applied."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from arcface.data import DataError, Manifest, validate_dataset
from arcface.data.input import make_dataset
from arcface.data.preprocess import model_input


@pytest.fixture(scope="module")
def sample_manifest(sample_dir) -> Manifest:
    return validate_dataset(str(sample_dir), str(sample_dir)).manifest


def _all(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_validation_batches_shapes_labels_and_values(sample_manifest, pillow_input):
    ds = make_dataset(sample_manifest, "validation", image_size=64, batch_size=8, training=False)
    assert ds.element_spec[0].shape.as_list() == [None, 64, 64, 3] and ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].dtype == tf.int32
    x, y = _all(ds)
    assert x.shape == (30, 64, 64, 3)  # the last partial batch is kept for validation
    assert y.tolist() == sample_manifest.labels("validation")
    names = [sample_manifest.class_names[i] for i in y]
    assert names == [r.identity for r in sample_manifest.split("validation")]
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0
    # Unaugmented validation images are exactly model_input (every entrance's preprocessing), and that is
    # Pillow's decode + crop + resize, rounded to uint8 levels (a rare rounding step apart).
    path = sample_manifest.absolute_paths("validation")[0]
    np.testing.assert_array_equal(x[0], model_input(tf.io.read_file(path), 64).numpy())
    np.testing.assert_allclose(x[0], pillow_input(path, 64), atol=1 / 128 + 1e-6)


def test_training_is_shuffled_deterministically_and_drops_the_remainder(sample_manifest):
    def epochs(seed: int, n: int = 2):
        ds = make_dataset(sample_manifest, "train", image_size=32, batch_size=16, training=True, seed=seed)
        return [_all(ds) for _ in range(n)]

    a, b, c = epochs(7), epochs(7), epochs(8, n=1)
    assert a[0][0].shape == (64, 32, 32, 3)  # 70 images, batch 16, drop_remainder
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert a[0][1].tolist() != a[1][1].tolist()  # reshuffled each epoch
    assert a[0][1].tolist() != c[0][1].tolist()  # another seed, another order
    assert a[0][1].tolist() != sorted(a[0][1].tolist())


def test_cache_and_repeat(sample_manifest):
    plain = _all(make_dataset(sample_manifest, "validation", image_size=32, batch_size=7, training=False))
    cached = make_dataset(sample_manifest, "validation", image_size=32, batch_size=7, training=False, cache=True)
    for _ in range(2):  # the second pass reads the cache
        np.testing.assert_array_equal(_all(cached)[0], plain[0])
    repeated = make_dataset(sample_manifest, "train", image_size=32, batch_size=10, training=True, repeat=True,
                            cache=True)
    assert len(list(repeated.take(20))) == 20  # 200 images from 70: more than two epochs


@pytest.fixture
def flip_manifest(tmp_path, kit) -> Manifest:
    """One identity of asymmetric faces (dark left half), plus an EXIF-rotated JPEG."""
    rgb = kit.asymmetric_rgb(64, 64)
    for split, n in (("train", 12), ("validation", 4)):
        for i in range(n):
            kit.save(tmp_path / split / "a" / f"{i}.png", np.clip(rgb.astype(int) + i, 0, 255).astype(np.uint8))
            kit.save(tmp_path / split / "b" / f"{i}.png", np.clip(rgb.astype(int) + 30 + i, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    kit.save(tmp_path / "validation" / "b" / "rot.jpg", kit.asymmetric_rgb(96, 64), exif=exif.tobytes(), quality=98)
    return validate_dataset(str(tmp_path), str(tmp_path)).manifest


def _flipped(x: np.ndarray) -> np.ndarray:
    """Per image: is the left half brighter than the right (the source has a dark left half)?"""
    half = x.shape[2] // 2
    return x[:, :, :half].mean(axis=(1, 2, 3)) > x[:, :, half:].mean(axis=(1, 2, 3))


def test_flip_and_augmentation_only_when_training(flip_manifest):
    train_aug = _all(make_dataset(flip_manifest, "train", image_size=32, batch_size=4, training=True, seed=1))[0]
    assert 0 < _flipped(train_aug).sum() < len(train_aug)
    train_plain = _all(make_dataset(flip_manifest, "train", image_size=32, batch_size=4, training=True,
                                    augment=False))[0]
    assert not _flipped(train_plain).any()
    val = make_dataset(flip_manifest, "validation", image_size=32, batch_size=4, training=False, augment=True)
    x, _ = _all(val)
    assert not _flipped(x[[i for i, r in enumerate(flip_manifest.split("validation")) if r.path != "b/rot.jpg"]]).any()


def test_without_jitter_a_training_image_is_itself_or_its_mirror(flip_manifest):
    """jitter=False is the reference trainer's augmentation: a horizontal flip and nothing else (NumPy's mirror)."""
    x, _ = _all(make_dataset(flip_manifest, "train", image_size=32, batch_size=4, training=True, seed=3,
                             jitter=False))
    plain_x, _ = _all(make_dataset(flip_manifest, "train", image_size=32, batch_size=64, training=False))
    mirrored = 0
    for image in x:
        same = [np.array_equal(image, p) for p in plain_x]
        mirror = [np.array_equal(image, p[:, ::-1]) for p in plain_x]
        assert any(same) or any(mirror), "a flip-only image matches no training image nor its mirror"
        mirrored += int(not any(same))
    assert 0 < mirrored < len(x)


def test_exif_orientation_is_applied(flip_manifest, pillow_input):
    rows = flip_manifest.split("validation")
    index = next(i for i, r in enumerate(rows) if r.path == "b/rot.jpg")
    assert (rows[index].orientation, rows[index].width, rows[index].height) == (8, 64, 96)
    x, _ = _all(make_dataset(flip_manifest, "validation", image_size=32, batch_size=64, training=False))
    path = flip_manifest.absolute_paths("validation")[index]
    expected = pillow_input(path, 32)  # Pillow's exif_transpose
    diff = np.abs(x[index] - expected)  # JPEG decoders differ by a few levels near edges
    assert diff.mean() < 1 / 128 and diff.max() < 12 / 128
    unrotated = pillow_input(path, 32, exif=False)
    assert np.abs(x[index] - unrotated).mean() > 20 / 128


def test_errors_name_the_fix(sample_manifest):
    with pytest.raises(DataError, match="fewer than batch_size=100"):
        make_dataset(sample_manifest, "validation", image_size=32, batch_size=100, training=True)
    stranger = dataclasses.replace(sample_manifest.split("validation")[0], identity="nobody")
    bad = Manifest(rows=[*sample_manifest.rows, stranger], roots=sample_manifest.roots,
                   class_names=sample_manifest.class_names)
    with pytest.raises(DataError, match="nobody"):
        make_dataset(bad, "validation", image_size=32, batch_size=4, training=False)
    with pytest.raises(DataError, match="unknown split"):
        make_dataset(sample_manifest, "test", image_size=32, batch_size=4, training=False)


@pytest.mark.shared
def test_real_lfw_jpegs_through_the_pipeline(lfw_dir, tmp_path, pillow_input):
    import shutil

    people = [p for p in sorted(lfw_dir.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2][:4]
    for person in people:
        images = sorted(person.glob("*.jpg"))
        for split, image in (("train", images[0]), ("validation", images[1])):
            (tmp_path / split / person.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, tmp_path / split / person.name / image.name)
    manifest = validate_dataset(str(tmp_path), str(tmp_path)).manifest
    x, y = _all(make_dataset(manifest, "validation", image_size=112, batch_size=3, training=False))
    assert x.shape == (4, 112, 112, 3) and y.tolist() == [0, 1, 2, 3]
    expected = pillow_input(manifest.absolute_paths("validation")[0], 112)
    assert np.abs(x[0] - expected).mean() < 1.5 / 128
