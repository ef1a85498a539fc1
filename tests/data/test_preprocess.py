"""model_input and its stages (decode, EXIF orientation, crop/resize): plain TF ops that match Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from arcface.artifacts import NORMALIZATION
from arcface.data.preprocess import (
    apply_orientation,
    crop_and_resize,
    decode_image,
    exif_orientation,
    face_pixels,
    model_input,
    normalize,
)


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


def test_model_input_range_shape_and_normalization():
    white = _encode(Image.new("RGB", (70, 50), (255, 255, 255)), "PNG")
    out = model_input(tf.constant(white), 112)
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
        return model_input(contents, 64)

    for data in [(sample_dir / "train" / "s2" / "3.pgm").read_bytes(), kit.jpeg_bytes(kit.asymmetric_rgb())]:
        out = serve(tf.constant(data)).numpy()
        assert out.shape == (64, 64, 3) and out.min() >= -1.0 and out.max() <= 1.0


# ---------------------------------------------------------------------------------------------------
# EXIF orientation read inside the graph, against Pillow
# ---------------------------------------------------------------------------------------------------
def _jpeg_with_exif(rgb: np.ndarray, tags: dict[int, object], endian: str = "<") -> bytes:
    exif = Image.Exif()
    exif.endian = endian  # Pillow writes "II" (little-endian) for "<", "MM" for ">"
    for tag, value in tags.items():
        exif[tag] = value
    return _encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_in_both_byte_orders(orientation, endian, kit):
    # Tags before and after 0x0112, as cameras write them, so the entry has to be found, not assumed first.
    tags = {0x010F: "Maker", 0x0110: "Phone 9", 0x0112: orientation, 0x011A: 72.0, 0x0131: "fw 1.2"}
    data = _jpeg_with_exif(kit.asymmetric_rgb(), tags, endian)
    assert data[data.index(b"Exif") + 6:][:2] == (b"II" if endian == "<" else b"MM")
    pillow = Image.open(io.BytesIO(data))
    assert pillow.getexif()[0x0112] == orientation
    assert int(exif_orientation(tf.constant(data))) == orientation
    upright = np.asarray(ImageOps.exif_transpose(pillow))
    got = face_pixels(tf.constant(data), 48, orientation=None).numpy()
    assert got.shape == (48, 48, 3)
    # The full path agrees with Pillow's upright view (crop of the shorter side, no resize: 48 px).
    side = min(upright.shape[:2])
    top, left = (upright.shape[0] - side) // 2, (upright.shape[1] - side) // 2
    assert np.abs(got.astype(int) - upright[top:top + side, left:left + side].astype(int)).max() <= 3


def test_exif_orientation_is_one_when_pillow_finds_none(kit):
    rgb = kit.asymmetric_rgb()
    no_tag = _jpeg_with_exif(rgb, {0x010F: "Maker"})
    sources = {
        "jpeg without exif": _encode(Image.fromarray(rgb), "JPEG"),
        "exif without the tag": no_tag,
        # IFD0 offset pointing far past the end of the file: Pillow reads no tags from it.
        "ifd0 outside the file": no_tag.replace(b"II*\x00\x08\x00\x00\x00", b"II*\x00\xff\xff\x00\x00", 1),
        "png": _encode(Image.fromarray(rgb), "PNG"), "gif": _encode(Image.fromarray(rgb).convert("P"), "GIF"),
        "bmp": _encode(Image.fromarray(rgb), "BMP"), "pgm": _encode(Image.fromarray(rgb).convert("L"), "PPM"),
        "empty": b"",
    }
    for name, data in sources.items():
        if data:
            assert Image.open(io.BytesIO(data)).getexif().get(0x0112) is None, name
        assert int(exif_orientation(tf.constant(data))) == 1, name
    # A tag value outside 1..8 means nothing to Pillow's exif_transpose, and nothing here.
    assert int(exif_orientation(tf.constant(_jpeg_with_exif(rgb, {0x0112: 9})))) == 1


def test_exif_orientation_after_an_app0_segment_and_inside_a_traced_function(kit):
    data = _jpeg_with_exif(kit.asymmetric_rgb(), {0x0112: 6})
    assert data[2:4] == b"\xff\xe0"  # Pillow writes JFIF APP0 first, so the Exif APP1 is not at offset 2
    traced = tf.function(exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
    assert int(traced(tf.constant(data))) == 6


def test_model_input_matches_the_pillow_reference(sample_dir, kit, pillow_input):
    face = np.asarray(Image.open(sample_dir / "train" / "s3" / "2.pgm").convert("RGB"))
    files = {"pgm": _encode(Image.fromarray(face).convert("L"), "PPM"),
             "png": _encode(Image.fromarray(face), "PNG"),
             "jpeg tag 6": _jpeg_with_exif(np.rot90(face, 1).copy(), {0x0112: 6})}
    for name, data in files.items():
        for size, crop in ((64, 0.9), (112, 1.0)):
            got = model_input(tf.constant(data), size, crop).numpy()
            expected = pillow_input(data, size, crop)
            # Lossless files: the resamplers agree to 0.002 levels, so a rare rounding step flips (1/128).
            # JPEG: TF's decoder (fast integer IDCT) and Pillow's differ by about a level, up to ~9 at edges.
            max_levels, mean_levels = (10, 1.5) if "jpeg" in name else (1, 0.01)
            diff = np.abs(got - expected) * 128
            assert diff.max() <= max_levels + 1e-4 and diff.mean() < mean_levels, (name, size)


def test_the_orientation_given_replaces_the_one_in_the_bytes(kit):
    rgb = kit.asymmetric_rgb()
    data = _jpeg_with_exif(rgb, {0x0112: 3})
    as_stored = face_pixels(tf.constant(data), 48, orientation=1).numpy()
    rotated = face_pixels(tf.constant(data), 48).numpy()
    np.testing.assert_array_equal(rotated, as_stored[::-1, ::-1])
    np.testing.assert_array_equal(face_pixels(tf.constant(data), 48, orientation=tf.constant(3)).numpy(), rotated)
