"""From encoded image bytes to the model's input tensor, as plain TF ops: the one way every entrance does it.

:func:`model_input` is what training, evaluation, the export's parity check, the SavedModel's bytes signature
and :class:`arcface.embedding.Embedder` all call, so a model is served the pixels it was trained on. It holds
no Python-side state and calls no Python code (no ``tf.numpy_function``), so a SavedModel embeds it whole.

The stages, each its own function:

* :func:`decode_image`: encoded bytes (JPEG, PNG, GIF, BMP, binary PGM/PPM) -> uint8 ``[H, W, 3]``. Grey
  images are replicated to three channels, palettes expanded, alpha dropped, 16-bit samples scaled to 8 bits.
  ``tf.io.decode_image`` does not read PGM/PPM, so those are parsed here from their header.
* :func:`exif_orientation`: the EXIF orientation tag of a JPEG, read inside the graph (1 when there is none);
  the manifest's orientation (computed by validation with Pillow) is passed instead when it is known.
* :func:`apply_orientation`: the orientation (1..8) applied as flips/rotations, so the face is upright.
* :func:`crop_and_resize`: centre crop, antialiased bilinear resize to ``image_size``.
* :func:`face_pixels`: all of the above, rounded to uint8 (half to even) -- what training caches and augments.
* :func:`normalize`: ``(x - 127.5) / 128`` (:data:`arcface.artifacts.NORMALIZATION`).
"""

from __future__ import annotations

import numpy as np
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


# EXIF in a JPEG: an APP1 segment whose payload is "Exif\0\0" then a TIFF header ("II*\0" little-endian or
# "MM\0*" big-endian, then the u32 offset of IFD0 from the header). IFD0 is a u16 entry count followed by
# 12-byte entries: tag u16, type u16, count u32, value (a SHORT sits in the first two bytes). A segment is at
# most 64 KiB and APP1 comes right after SOI (or the APP0 JFIF segment), so the first 64 KiB hold it.
_EXIF_SEARCH_BYTES = 1 << 16
_EXIF_MARKERS = (b"Exif\0\0II*\0", b"Exif\0\0MM\0*")
_MAX_IFD_ENTRIES = 256  # IFD0 tags are sorted ascending, so 0x0112 is among the first few
_ORIENTATION_TAG = 0x0112
_SHORT, _LONG = 3, 4


def exif_orientation(contents: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 1..8) of a JPEG's IFD0, as Pillow's ``getexif()[0x0112]`` reads it.

    1 for every other format, for a JPEG without EXIF or without the tag, and for a value outside 1..8 or
    an entry that points outside the file (as the validation step does): never an error, so a damaged EXIF
    block cannot make an otherwise readable image unreadable.
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    head = tf.io.decode_raw(tf.strings.substr(contents, 0, _EXIF_SEARCH_BYTES), tf.uint8)
    n = tf.cast(tf.size(head), tf.int64)
    # Zero padding: every read below stays in range whatever the offsets say; `n` tells real bytes.
    data = tf.pad(head, [[0, _EXIF_SEARCH_BYTES + 16 - tf.size(head)]])

    def at(index: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(data, tf.clip_by_value(index, 0, _EXIF_SEARCH_BYTES + 15)), tf.int64)

    # A vectorised search: every 'E' is a candidate, and its next 10 bytes are compared with both markers.
    # Position 0 is appended so the list is never empty (a JPEG starts with 0xFF, so it never matches there).
    candidates = tf.concat([tf.where(head == ord("E"))[:, 0], tf.zeros([1], tf.int64)], axis=0)
    window = at(candidates[:, None] + tf.range(len(_EXIF_MARKERS[0]), dtype=tf.int64))
    markers = tf.constant([list(m) for m in _EXIF_MARKERS], tf.int64)
    hits = tf.reduce_any(tf.reduce_all(window[:, None, :] == markers[None], axis=2), axis=1)
    is_jpeg = (at(0) == 0xFF) & (at(1) == 0xD8)
    tiff = tf.gather(candidates, tf.argmax(tf.cast(hits, tf.int32), output_type=tf.int64)) + 6
    little = at(tiff) == ord("I")

    def u16(index: tf.Tensor) -> tf.Tensor:
        lo, hi = tf.where(little, at(index), at(index + 1)), tf.where(little, at(index + 1), at(index))
        return lo + 256 * hi

    def u32(index: tf.Tensor) -> tf.Tensor:
        lo, hi = tf.where(little, u16(index), u16(index + 2)), tf.where(little, u16(index + 2), u16(index))
        return lo + 65536 * hi

    ifd = tiff + u32(tiff + 4)
    entries = ifd + 2 + 12 * tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64)
    kind = u16(entries + 2)
    value = tf.where(kind == _LONG, u32(entries + 8), u16(entries + 8))
    is_orientation = ((tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64) < u16(ifd)) & (entries + 12 <= n)
                      & (u16(entries) == _ORIENTATION_TAG) & ((kind == _SHORT) | (kind == _LONG)))
    orientation = tf.gather(value, tf.argmax(tf.cast(is_orientation, tf.int32), output_type=tf.int64))
    known = is_jpeg & tf.reduce_any(hits) & tf.reduce_any(is_orientation) & (orientation >= 1) & (orientation <= 8)
    return tf.cast(tf.where(known, orientation, 1), tf.int32)


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


def face_pixels(contents: tf.Tensor, image_size: int, center_crop: float = 1.0,
                orientation: tf.Tensor | int | None = None) -> tf.Tensor:
    """Encoded image bytes -> the upright, cropped and resized face as uint8 ``[S, S, 3]``.

    ``orientation`` is the EXIF orientation when the caller knows it (the manifest's); ``None`` reads it from
    the bytes (:func:`exif_orientation`). Rounding to uint8 levels here is the one rounding rule, so caching
    these pixels (training's ``cache=True``) changes nothing.
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    if orientation is None:
        orientation = exif_orientation(contents)
    return upright_face_pixels(apply_orientation(decode_image(contents), orientation), image_size, center_crop)


def upright_face_pixels(image: tf.Tensor, image_size: int, center_crop: float = 1.0) -> tf.Tensor:
    """An upright uint8 ``[H, W, 3]`` image (already decoded) -> :func:`face_pixels`'s uint8 ``[S, S, 3]``."""
    resized = crop_and_resize(image, image_size, center_crop)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def decoded_model_input(image: tf.Tensor | np.ndarray, image_size: int, center_crop: float = 1.0) -> tf.Tensor:
    """An upright uint8 ``[H, W, 3]`` image -> :func:`model_input`'s tensor, for an entrance that decoded the
    photo once already (to find the face in it): the same pixels as ``model_input`` of its lossless encoding."""
    return normalize(upright_face_pixels(tf.convert_to_tensor(image, tf.uint8), image_size, center_crop))


def model_input(contents: tf.Tensor, image_size: int, center_crop: float = 1.0,
                orientation: tf.Tensor | int | None = None) -> tf.Tensor:
    """Encoded image bytes -> normalized float32 ``[image_size, image_size, 3]``: what every model is fed.

    See :func:`face_pixels` for ``orientation``.
    """
    return normalize(face_pixels(contents, image_size, center_crop, orientation))
