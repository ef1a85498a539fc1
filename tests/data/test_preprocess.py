"""decode_image / apply_orientation / preprocess: plain TF ops that match Pillow's decode of the same file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from arcface.artifacts import NORMALIZATION
from arcface.data.preprocess import apply_orientation, crop_and_resize, decode_image, normalize, preprocess


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return decode_image(tf.constant(data)).numpy()


def test_grey_pgm_becomes_three_identical_channels_equal_to_pillow(sample_dir):
    path = sample_dir / "train" / "s1" / "1.pgm"
    image = _decode(path.read_bytes())
    assert image.dtype == np.uint8 and image.shape == (112, 92, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.shared
def test_real_orl_pgm_matches_pillow(shared_faces):
    path = shared_faces / "orl_faces" / "s40" / "10.pgm"
    np.testing.assert_array_equal(_decode(path.read_bytes()), np.asarray(Image.open(path).convert("RGB")))


def test_ppm_and_pgm_header_variants(kit):
    rgb = kit.asymmetric_rgb()
    np.testing.assert_array_equal(_decode(_encode(Image.fromarray(rgb), "PPM")), rgb)  # P6
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    # Comments and odd whitespace in the header; a sample byte that looks like whitespace right after it.
    grey[0, 0] = ord("\n")
    data = b"P5\n# made by hand\n4  3\n# another\n255\n" + grey.tobytes()
    np.testing.assert_array_equal(_decode(data)[..., 0], grey)
    # maxval 15: scaled to 0..255; 16-bit big-endian samples: scaled from 0..65535.
    low = np.array([[0, 15, 5]], np.uint8)
    np.testing.assert_array_equal(_decode(b"P5 3 1 15\n" + low.tobytes())[..., 0], [[0, 255, 85]])
    deep = np.array([[0, 65535, 257 * 100, 1000]], ">u2")
    np.testing.assert_array_equal(_decode(b"P5\n4 1\n65535\n" + deep.tobytes())[..., 1], [[0, 255, 100, 4]])


def test_truncated_pgm_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated PGM"):
        _decode(b"P5\n4 4\n255\n" + bytes(10))


@pytest.mark.parametrize("kind", ["jpeg", "png", "bmp", "gif", "pgm", "cmyk", "png16", "palette", "rgba", "grey"])
def test_each_format_decodes_like_pillow(kind, kit):
    rgb = kit.asymmetric_rgb()
    source = {
        "jpeg": (Image.fromarray(rgb), "JPEG"), "png": (Image.fromarray(rgb), "PNG"),
        "bmp": (Image.fromarray(rgb), "BMP"), "gif": (Image.fromarray(rgb).convert("P"), "GIF"),
        "pgm": (Image.fromarray(rgb).convert("L"), "PPM"), "cmyk": (Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "png16": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"),
        "palette": (Image.fromarray(rgb).convert("P"), "PNG"), "rgba": (Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "grey": (Image.fromarray(rgb).convert("L"), "PNG"),
    }[kind]
    data = _encode(*source)
    image = _decode(data)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    if kind == "png16":
        expected = np.repeat(rgb[..., :1], 3, axis=2)  # 16-bit v*257 scales back to v exactly
    else:
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    # JPEG decoders differ by a level or two (IDCT/upsampling); lossless formats are exact.
    tolerance = {"jpeg": 3, "cmyk": 9}.get(kind, 0)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow_exif_transpose(orientation, kit):
    rgb = kit.asymmetric_rgb()
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(_encode(im, "PNG", exif=exif)))))
    got = apply_orientation(tf.constant(rgb), orientation).numpy()
    np.testing.assert_array_equal(got, expected)


def test_preprocess_range_shape_and_normalization():
    white = tf.fill([50, 70, 3], tf.constant(255, tf.uint8))
    out = preprocess(white, 112)
    assert out.shape == (112, 112, 3) and out.dtype == tf.float32
    expected = (255 - NORMALIZATION["mean"]) * NORMALIZATION["scale"]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(normalize(tf.constant([0.0, 127.5])).numpy(), [-127.5 / 128, 0.0])


def test_non_square_is_centre_cropped_then_resized():
    # 40 x 100: the centred 40 x 40 square is black, the sides are white, so only black may survive.
    image = np.full((40, 100, 3), 255, np.uint8)
    image[:, 30:70] = 0
    np.testing.assert_array_equal(crop_and_resize(tf.constant(image), 20).numpy(), 0)
    # center_crop=0.5 of a 40 x 40 image keeps its centred 20 x 20, here a grey block.
    square = np.zeros((40, 40, 3), np.uint8)
    square[10:30, 10:30] = 200
    np.testing.assert_allclose(crop_and_resize(tf.constant(square), 10, center_crop=0.5).numpy(), 200, atol=1e-3)
    assert abs(float(tf.reduce_mean(crop_and_resize(tf.constant(square), 10)))) < 200 * 0.3 + 1
    with pytest.raises(ValueError, match="center_crop"):
        crop_and_resize(tf.constant(square), 10, center_crop=1.5)


def test_works_inside_a_traced_serving_function(sample_dir, kit):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def serve(contents):
        return preprocess(decode_image(contents), 64)

    for data in [(sample_dir / "train" / "s2" / "3.pgm").read_bytes(), kit.jpeg_bytes(kit.asymmetric_rgb())]:
        out = serve(tf.constant(data)).numpy()
        assert out.shape == (64, 64, 3) and out.min() >= -1.0 and out.max() <= 1.0
