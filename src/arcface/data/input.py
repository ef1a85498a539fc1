"""The tf.data input pipeline: manifest rows -> batches of (normalized images, integer labels).

Order of the stages, and why:

* training without cache: shuffle the file list (cheap: strings), then read + decode in parallel, so each epoch
  reads the files in a new order without holding decoded images in a shuffle buffer;
* with ``cache=True``: read + decode + resize once, cache the uint8 ``S x S`` crops in memory, then shuffle
  them, so later epochs skip reading and decoding (augmentation still differs every epoch);
* augmentation comes after the cache and draws its randomness from ``tf.data.Dataset.random(seed)`` zipped
  with the images: stateless ops with per-element seeds, so a run is reproducible given ``seed`` even with
  parallel map calls, and the draws change every epoch.

Every image is loaded by :func:`arcface.data.preprocess.face_pixels` (with the manifest's EXIF orientation),
the function every other entrance (evaluation, export, serving, ``arcface embed``) uses too; its uint8 output
is what the cache holds, so ``cache`` does not change a single pixel.
"""

from __future__ import annotations

import tensorflow as tf

from arcface.data.manifest import DataError, Manifest
from arcface.data.preprocess import face_pixels, normalize

AUTOTUNE = tf.data.AUTOTUNE

# Light augmentation for aligned faces: the face must stay where the alignment put it.
MIN_CROP_SCALE = 0.9  # random crop keeps 90-100% of the side, then resizes back
BRIGHTNESS_DELTA = 0.1 * 255  # +-10% of full scale
CONTRAST_RANGE = (0.9, 1.1)
MAX_SHUFFLE_BUFFER_CACHED = 16_384  # decoded crops held for shuffling when cache=True


def _load(image_size: int, center_crop: float):
    def load(path: tf.Tensor, label: tf.Tensor, orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return face_pixels(tf.io.read_file(path), image_size, center_crop, orientation), label

    return load


def augment_image(image: tf.Tensor, seed: tf.Tensor, image_size: int, jitter: bool = True) -> tf.Tensor:
    """uint8/float ``[S, S, 3]`` (0..255) -> float32 0..255: random crop/scale jitter, horizontal flip,
    brightness and contrast, each from a stateless seed derived from ``seed`` (an int64 scalar); without
    ``jitter``, the flip only."""
    seed = tf.cast(seed, tf.int64)

    def sub(i: int) -> tf.Tensor:
        return tf.stack([seed, tf.constant(i, tf.int64)])

    image = tf.cast(image, tf.float32)
    if not jitter:
        return tf.image.stateless_random_flip_left_right(image, sub(2))
    scale = tf.random.stateless_uniform([], sub(0), MIN_CROP_SCALE, 1.0)
    crop = tf.cast(tf.round(scale * image_size), tf.int32)
    image = tf.image.stateless_random_crop(image, tf.stack([crop, crop, 3]), sub(1))
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, sub(2))
    image = tf.image.stateless_random_brightness(image, BRIGHTNESS_DELTA, sub(3))
    image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE, sub(4))
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), [image_size, image_size, 3])


def make_dataset(manifest: Manifest, split: str, *, image_size: int, batch_size: int, training: bool,
                 seed: int = 42, center_crop: float = 1.0, augment: bool = True, jitter: bool = True,
                 cache: bool = False, drop_remainder: bool | None = None, repeat: bool = False) -> tf.data.Dataset:
    """Batches of (float32 ``[B, S, S, 3]`` normalized images, int32 ``[B]`` labels) for one split.

    Labels index ``manifest.class_names``. ``training`` turns on the seeded shuffle (new order each epoch)
    and, with ``augment``, the random augmentation (the flip only without ``jitter``); validation is read in
    manifest order, unaugmented. ``drop_remainder`` defaults to ``training`` (fixed batch shapes for training, every image for validation).
    """
    rows = manifest.split(split)
    if not rows:
        raise DataError(f"the manifest has no {split} images; run the validation step on a dataset with a "
                        f"{split} split")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1")
    drop_remainder = training if drop_remainder is None else drop_remainder
    if drop_remainder and len(rows) < batch_size:
        raise DataError(f"the {split} split has {len(rows)} images, fewer than batch_size={batch_size}, so "
                        "dropping the last partial batch leaves nothing; lower --batch_size or add images")
    labels = manifest.labels(split)  # raises DataError for identities that are not classes
    n = len(rows)
    ds = tf.data.Dataset.from_tensor_slices((
        tf.constant(manifest.absolute_paths(split)),
        tf.constant(labels, tf.int32),
        tf.constant([r.orientation for r in rows], tf.int32),
    ))
    load = _load(image_size, center_crop)
    if training and not cache:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
        if training:
            ds = ds.shuffle(min(n, MAX_SHUFFLE_BUFFER_CACHED), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if training and augment:
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, randoms)).map(
            lambda element, r: (normalize(augment_image(element[0], r, image_size, jitter)), element[1]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda image, label: (normalize(image), label), num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
