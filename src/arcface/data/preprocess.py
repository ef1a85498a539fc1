"""Decoding and preprocessing of one face image, as plain TF ops.

The same functions run in the training input pipeline and in the exported model's serving signature, so they
hold no Python-side state and call no Python code (no ``tf.numpy_function``): a SavedModel that embeds them
decodes and normalizes images exactly as training did.

* :func:`decode_image`: encoded bytes (JPEG, PNG, GIF, BMP, binary PGM/PPM) -> uint8 ``[H, W, 3]``. Grey
  images are replicated to three channels, palettes expanded, alpha dropped, 16-bit samples scaled to 8 bits.
  ``tf.io.decode_image`` does not read PGM/PPM, so those are parsed here from their header.
* :func:`apply_orientation`: the EXIF orientation (1..8) recorded in the manifest, applied as flips/rotations.
* :func:`preprocess`: centre crop, bilinear resize to ``image_size``, and ``(x - 127.5) / 128``
  (:data:`arcface.artifacts.NORMALIZATION`).
"""

from __future__ import annotations

import tensorflow as tf

from arcface.artifacts import NORMALIZATION

MEAN = float(NORMALIZATION["mean"])
SCALE = float(NORMALIZATION["scale"])

# P5 (grey) or P6 (RGB); whitespace and '#' comments between the fields; exactly one whitespace byte after
# maxval, then the samples. Group 1 is the whole header, so its length is where the samples start.
_SEP = r"(?:\s|#[^\n]*\n)+"
_PNM_HEADER = rf"(?s)^(P([56]){_SEP}(\d+){_SEP}(\d+){_SEP}(\d+)\s).*$"
_PNM_HEADER_MAX = 1024  # bytes searched for the header (comments included)


def _ascii_head(contents: tf.Tensor) -> tf.Tensor:
    """The first bytes with every non-ASCII byte replaced by 'x': RE2 refuses invalid UTF-8, and sample bytes
    that follow the header are arbitrary. The length is unchanged, so offsets stay valid."""
    head = tf.io.decode_raw(tf.strings.substr(contents, 0, _PNM_HEADER_MAX), tf.uint8)
    head = tf.where(head >= 128, tf.constant(ord("x"), tf.uint8), head)
    return tf.strings.unicode_encode(tf.cast(head, tf.int32), "UTF-8")


def _decode_pnm(contents: tf.Tensor) -> tf.Tensor:
    head = _ascii_head(contents)
    ok = tf.strings.regex_full_match(head, _PNM_HEADER)
    check = tf.debugging.Assert(ok, ["not a binary PGM/PPM (P5/P6) header:", tf.strings.substr(head, 0, 32)])
    with tf.control_dependencies([check]):
        fields = tf.strings.to_number(
            tf.strings.split(tf.strings.regex_replace(head, _PNM_HEADER, r"\2 \3 \4 \5")), tf.int32)
        header_len = tf.strings.length(tf.strings.regex_replace(head, _PNM_HEADER, r"\1"))
    kind, width, height, maxval = fields[0], fields[1], fields[2], fields[3]
    channels = tf.where(kind == 5, 1, 3)
    wide = maxval > 255  # two bytes per sample, big-endian
    n_bytes = width * height * channels * tf.where(wide, 2, 1)
    raw = tf.strings.substr(contents, header_len, n_bytes)
    check = tf.debugging.assert_equal(tf.strings.length(raw), n_bytes,
                                      message="truncated PGM/PPM: fewer sample bytes than the header announces")
    with tf.control_dependencies([check]):
        samples = tf.cond(wide,
                          lambda: tf.cast(tf.io.decode_raw(raw, tf.uint16, little_endian=False), tf.float32),
                          lambda: tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.float32))
    # maxval 255 is exact (x * 255 / 255 == x in float32); any other maxval is rescaled to 0..255.
    samples = tf.round(samples * 255.0 / tf.cast(tf.maximum(maxval, 1), tf.float32))
    image = tf.reshape(tf.cast(tf.clip_by_value(samples, 0, 255), tf.uint8), tf.stack([height, width, channels]))
    # Grey -> RGB by repeating channel 0; RGB stays as is. A gather avoids a cond with different shapes.
    return tf.gather(image, tf.where(channels == 1, tf.constant([0, 0, 0]), tf.constant([0, 1, 2])), axis=2)


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> uint8 ``[H, W, 3]``; the first frame of an animated GIF."""
    contents = tf.convert_to_tensor(contents, tf.string)
    is_pnm = tf.strings.regex_full_match(tf.strings.substr(contents, 0, 2), "P[56]")
    image = tf.cond(is_pnm, lambda: _decode_pnm(contents),
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8))
    return tf.ensure_shape(image, [None, None, 3])


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Apply an EXIF orientation tag (1..8; anything else is treated as 1) so the image is upright.

    Same result as ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip vertically, 5 transpose,
    6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    # Every orientation is "transpose or not, then mirror and/or flip", so no branches are needed: a dynamic
    # permutation and a dynamic list of reversed axes (tracing eight switch_case branches is slow).
    o = tf.cast(orientation, tf.int32)
    o = tf.where((o >= 1) & (o <= 8), o, 1)
    transpose = o >= 5
    mirror = (o == 2) | (o == 3) | (o == 6) | (o == 7)
    flip = (o == 3) | (o == 4) | (o == 7) | (o == 8)
    image = tf.transpose(image, tf.where(transpose, tf.constant([1, 0, 2]), tf.constant([0, 1, 2])))
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip, mirror]))
    return tf.reverse(image, axes)


def crop_and_resize(image: tf.Tensor, image_size: int, center_crop: float = 1.0) -> tf.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[S, S, 3]`` in 0..255: the centred square of side
    ``center_crop * min(H, W)``, resized bilinearly (antialiased when shrinking) to ``image_size``."""
    if not 0 < center_crop <= 1:
        raise ValueError(f"center_crop={center_crop} must be in (0, 1]: it is the fraction of the shorter side kept")
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.minimum(height, width), tf.float32)
    crop = tf.maximum(1, tf.cast(tf.round(side * center_crop), tf.int32))
    top, left = (height - crop) // 2, (width - crop) // 2
    square = image[top:top + crop, left:left + crop, :]
    resized = tf.image.resize(square, [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def normalize(image: tf.Tensor) -> tf.Tensor:
    """Pixels 0..255 -> ``(x - 127.5) / 128`` in float32 (about -1..1)."""
    return (tf.cast(image, tf.float32) - MEAN) * SCALE


def preprocess(image_uint8: tf.Tensor, image_size: int, center_crop: float = 1.0) -> tf.Tensor:
    """uint8 ``[H, W, 3]`` -> normalized float32 ``[image_size, image_size, 3]`` (what every model is fed)."""
    return normalize(crop_and_resize(image_uint8, image_size, center_crop))
