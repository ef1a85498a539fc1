"""Face detection and 5-point alignment on real faces: the transform, the warp, the choice of face, the
findings, the cache, and the user's files left as they were."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arcface.contracts import AlignedDir, ManifestDir
from arcface.data import DataError, validate_dataset
from arcface.data.align import (
    Face,
    align_face,
    align_images,
    align_manifest,
    choose_face,
    default_detector,
    similarity_transform,
    template,
    upright_image,
)

SIZE = 112


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The 2x3 similarity ``matrix`` applied to (x, y) points."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    """The 2x3 matrix of x -> scale * R(degrees) x + shift, written out by hand (the reference)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the central face region of two crops (eyes to chin, no borders: there the
    crop of a pre-cropped image is black, and the crop of a photo shows the scene)."""
    a, b = a[24:100, 24:88].astype(np.float64).ravel(), b[24:100, 24:88].astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def scene(faces: list[tuple[np.ndarray, float, float, tuple[int, int]]], size=(640, 480)) -> np.ndarray:
    """A smooth grey background with each (image, scale, degrees, top-left) pasted in, rotated about its centre."""
    width, height = size
    ramp = np.linspace(90, 160, width)[None, :, None] + np.linspace(-20, 20, height)[:, None, None]
    canvas = Image.fromarray(np.repeat(ramp, 3, axis=2).astype(np.uint8))
    for image, scale, degrees, corner in faces:
        face = Image.fromarray(image)
        face = face.resize((round(face.width * scale), round(face.height * scale)), Image.Resampling.BICUBIC)
        mask = Image.new("L", face.size, 255).rotate(degrees, expand=True)
        canvas.paste(face.rotate(degrees, expand=True, resample=Image.Resampling.BICUBIC), corner, mask)
    return np.asarray(canvas)


@pytest.fixture(scope="module")
def orl_face(sample_dir) -> np.ndarray:
    return rgb(sample_dir / "train" / "s1" / sorted(os.listdir(sample_dir / "train" / "s1"))[0])


@pytest.fixture(scope="module")
def other_face(sample_dir) -> np.ndarray:
    return rgb(sample_dir / "train" / "s5" / sorted(os.listdir(sample_dir / "train" / "s5"))[0])


# ---------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------
def test_template_is_the_arcface_112_template_scaled():
    assert template(112)[0] == pytest.approx([38.2946, 51.6963])
    assert template(56) == pytest.approx(template(112) / 2)


@pytest.mark.parametrize("scale, degrees, shift", [(1.0, 0.0, (0, 0)), (2.5, 30.0, (200, 90)),
                                                   (0.4, -75.0, (-10, 40)), (3.0, 180.0, (500, 400))])
def test_similarity_transform_inverts_a_known_transform(scale, degrees, shift):
    known = similarity(scale, degrees, shift)
    points = apply_transform(known, template(SIZE))
    fitted = similarity_transform(points, template(SIZE))
    assert np.abs(apply_transform(fitted, points) - template(SIZE)).max() < 1e-9
    inverse = np.linalg.inv(np.vstack([known, [0, 0, 1]]))[:2]
    assert fitted == pytest.approx(inverse, abs=1e-9)


def test_similarity_transform_is_the_least_squares_fit_and_never_a_reflection():
    rng = np.random.default_rng(0)
    noisy = apply_transform(similarity(1.3, 10, (5, 7)), template(SIZE)) + rng.normal(0, 1.0, (5, 2))
    fitted = similarity_transform(noisy, template(SIZE))
    error = np.sum((apply_transform(fitted, noisy) - template(SIZE)) ** 2)
    for _ in range(200):  # no nearby similarity does better
        a, b = fitted[0, 0] + rng.normal(0, 1e-3), fitted[1, 0] + rng.normal(0, 1e-3)
        other = np.array([[a, -b, fitted[0, 2] + rng.normal(0, 0.05)], [b, a, fitted[1, 2] + rng.normal(0, 0.05)]])
        assert np.sum((apply_transform(other, noisy) - template(SIZE)) ** 2) >= error
    mirrored = template(SIZE) * [-1, 1]  # a mirror image cannot be matched by rotating: det stays > 0
    assert np.linalg.det(similarity_transform(mirrored, template(SIZE))[:, :2]) > 0


def test_warp_brings_points_placed_by_a_known_transform_back_to_the_template_within_a_pixel():
    known = similarity(2.2, 35.0, (180.0, 60.0))
    points = apply_transform(known, template(SIZE))
    canvas = np.zeros((480, 640, 3), np.uint8)
    yy, xx = np.mgrid[0:480, 0:640]
    for x, y in points:  # a bright disc of radius 6 around each point (index coordinates)
        canvas[(xx - x) ** 2 + (yy - y) ** 2 <= 36] = 255
    crop = align_face(canvas, points, SIZE)[:, :, 0].astype(np.float64)
    cy, cx = np.mgrid[0:SIZE, 0:SIZE]
    for tx, ty in template(SIZE):
        window = ((cx - tx) ** 2 + (cy - ty) ** 2 <= 25) * crop
        found = (np.sum(window * cx) / window.sum(), np.sum(window * cy) / window.sum())
        assert math.dist(found, (tx, ty)) < 1.0, (found, (tx, ty))


# ---------------------------------------------------------------------------------------------------
# Detection on real faces
# ---------------------------------------------------------------------------------------------------
def _check_landmarks(face: Face) -> None:
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.points
    assert lx < nx < rx and mlx < mrx  # left/right as seen in the image
    assert max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
    x1, y1, x2, y2 = face.box
    assert all(x1 - 2 <= x <= x2 + 2 and y1 - 2 <= y <= y2 + 2 for x, y in face.points)


@pytest.mark.shared
def test_detection_finds_the_face_in_orl_and_lfw(shared_faces, lfw_dir):
    orl = sorted((shared_faces / "orl_faces").glob("s*/1.pgm"))[:20]
    lfw = sorted(lfw_dir.glob("*/*_0001.jpg"))[:20]
    assert len(orl) == 20 and len(lfw) == 20
    images = [upright_image(p.read_bytes()) for p in orl + lfw]
    for path, result in zip(orl + lfw, align_images(images, SIZE), strict=True):
        assert result.usable, (path, result.findings)
        assert result.face.score >= 0.9
        _check_landmarks(result.face)
        assert result.crop.shape == (SIZE, SIZE, 3)


# ---------------------------------------------------------------------------------------------------
# Planted photos
# ---------------------------------------------------------------------------------------------------
def test_a_face_pasted_into_a_scene_gives_the_crop_of_the_face_itself(orl_face, other_face):
    direct, = align_images([orl_face], SIZE)
    other, = align_images([other_face], SIZE)
    # MTCNN finds upright faces up to about +-25 degrees (at 2x, -25 is already missed: a limit of the detector).
    for scale, degrees, corner in [(1.5, 20.0, (300, 150)), (2.0, -20.0, (60, 40)), (0.9, 0.0, (500, 300)),
                                   (1.0, -25.0, (200, 100))]:
        planted, = align_images([scene([(orl_face, scale, degrees, corner)])], SIZE)
        assert planted.usable and not planted.findings, planted.findings
        same, different = correlation(planted.crop, direct.crop), correlation(planted.crop, other.crop)
        assert same > 0.8 and same > different + 0.3, (scale, degrees, same, different)
        # The face was found where it was pasted: its box centre is the pasted image's centre (+- 15 %).
        w, h = orl_face.shape[1] * scale, orl_face.shape[0] * scale
        side = abs(w * math.cos(math.radians(degrees))) + abs(h * math.sin(math.radians(degrees)))
        centre = (corner[0] + side / 2, corner[1] + (abs(w * math.sin(math.radians(degrees)))
                                                     + abs(h * math.cos(math.radians(degrees)))) / 2)
        x1, y1, x2, y2 = planted.face.box
        assert math.dist(((x1 + x2) / 2, (y1 + y2) / 2), centre) < 0.15 * side


def test_two_faces_keep_the_largest_and_say_so(orl_face, other_face):
    photo = scene([(other_face, 1.0, 0.0, (40, 60)), (orl_face, 2.0, 0.0, (330, 120))])
    result, = align_images([photo], SIZE)
    assert [code for code, _ in result.findings] == ["several_faces"]
    direct, other = align_images([orl_face, other_face], SIZE)
    assert correlation(result.crop, direct.crop) > max(0.8, correlation(result.crop, other.crop) + 0.2)
    assert result.face.box[0] > 300  # the larger face, on the right


def test_equal_faces_tie_and_the_most_central_wins():
    def face(x: float, y: float, side: float, score: float = 0.99) -> Face:
        return Face((x, y, x + side, y + side), score, ((0, 0),) * 5)

    central, corner, large = face(280, 200, 80), face(0, 0, 84), face(500, 380, 140)
    assert choose_face([corner, central], 640, 480) == central  # within 10 %: a tie, centrality decides
    assert choose_face([corner, central, large], 640, 480) == large  # clearly larger wins wherever it is
    assert choose_face([face(280, 200, 80, score=0.5), corner], 640, 480) == corner  # low scores are no candidates
    assert choose_face([face(280, 200, 80, score=0.5)], 640, 480) is None


def test_a_blank_image_has_no_face():
    result, = align_images([np.full((300, 400, 3), 128, np.uint8)], SIZE)
    assert not result.usable and [code for code, _ in result.findings] == ["no_face"]


def test_exif_rotated_photo_is_aligned_upright(orl_face, tmp_path):
    """Detection sees the upright image: a JPEG stored sideways with EXIF orientation 6 aligns like the upright."""
    upright = Image.fromarray(scene([(orl_face, 1.5, 0.0, (200, 120))]))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", quality=95, exif=exif)
    upright.save(tmp_path / "upright.jpg", quality=95)
    a, b = align_images([upright_image((tmp_path / n).read_bytes()) for n in ("upright.jpg", "sideways.jpg")], SIZE)
    assert a.usable and b.usable and correlation(a.crop, b.crop) > 0.95


# ---------------------------------------------------------------------------------------------------
# The align step over a manifest: findings, policy, cache, the user's files
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def photos(sample_dir, tmp_path) -> Path:
    """Three sample identities, plus a blank 'photo' in s2's training folder."""
    root = tmp_path / "photos"
    for split in ("train", "validation"):
        for identity in ("s1", "s2", "s3"):
            shutil.copytree(sample_dir / split / identity, root / split / identity)
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(root / "train" / "s2" / "blank.png")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def validated(root: Path, out: Path):
    return validate_dataset(str(root / "train"), str(root / "validation"), output_dir=str(out)).manifest


def test_align_step_writes_crops_findings_and_a_manifest_training_reads(photos, tmp_path):
    before = snapshot(photos)
    manifest = validated(photos, tmp_path / "validated")
    result = align_manifest(manifest, str(tmp_path / "aligned"), image_size=64)
    assert snapshot(photos) == before  # the user's files: same bytes, same mtimes, nothing added
    report = AlignedDir.read_report(tmp_path / "aligned")
    assert report["findings_by_code"] == {"no_face": 1}
    assert report["findings_by_identity"] == {"s2": {"no_face": 1}}
    assert report["findings"][0]["path"].endswith("blank.png") and report["findings"][0]["action"] == "excluded"
    read = ManifestDir.read(tmp_path / "aligned")  # what train and evaluate call
    assert len(read.rows) == len(manifest.rows) - 1 and read.class_names == ["s1", "s2", "s3"]
    assert read.alignment["method"] == "mtcnn" and read.alignment["image_size"] == 64
    for path in read.absolute_paths("train"):
        assert Image.open(path).size == (64, 64)
    records = AlignedDir.read_records(tmp_path / "aligned")["images"]
    row = manifest.split("train")[0]
    record = records[row.sha256]
    assert record["source"] == os.path.join(manifest.roots["train"], row.path) and record["score"] > 0.9
    assert len(record["points"]) == 5 and len(record["box"]) == 4
    assert result.aligned == len(manifest.rows) and result.reused == 0
    assert "no_face" in (tmp_path / "aligned" / "report.md").read_text()


def test_strict_fails_naming_the_image_and_the_fix(photos, tmp_path):
    manifest = validated(photos, tmp_path / "validated")
    with pytest.raises(DataError, match=r"no_face: .*blank\.png.*fix: use a photo"):
        align_manifest(manifest, str(tmp_path / "aligned"), image_size=64, strict=True)


def test_an_identity_left_without_faces_is_reported_like_an_empty_one(photos, tmp_path):
    for level, image in enumerate(sorted((photos / "train" / "s3").iterdir())):  # distinct bytes: no duplicates
        Image.fromarray(np.full((112, 92, 3), 90 + level, np.uint8)).save(image.with_suffix(".png"))
        image.unlink()
    manifest = validated(photos, tmp_path / "validated")
    result = align_manifest(manifest, str(tmp_path / "aligned"), image_size=64)
    assert result.manifest.class_names == ["s1", "s2"] and "s3" not in result.manifest.identities("validation")
    assert result.report["findings_by_code"]["empty_identity"] == 1
    assert result.report["findings_by_identity"]["s3"]["no_face"] == 7
    with pytest.raises(DataError, match="pass --n_classes=2"):
        align_manifest(manifest, str(tmp_path / "again"), image_size=64, n_classes=3)


def test_a_rerun_reuses_the_crops_and_aligns_a_changed_file_again(photos, tmp_path):
    first = align_manifest(validated(photos, tmp_path / "v1"), str(tmp_path / "a1"), image_size=64)
    second = align_manifest(validated(photos, tmp_path / "v2"), str(tmp_path / "a2"), image_size=64,
                            cache_dir=str(tmp_path / "a1"))
    assert second.aligned == 0 and second.reused == first.aligned
    assert second.manifest.sha256 == first.manifest.sha256
    changed = photos / "train" / "s1" / sorted(os.listdir(photos / "train" / "s1"))[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)  # same name, new content
    third = align_manifest(validated(photos, tmp_path / "v3"), str(tmp_path / "a3"), image_size=64,
                           cache_dir=str(tmp_path / "a2"))
    assert third.aligned == 1 and third.reused == first.aligned - 1
    other_size = align_manifest(validated(photos, tmp_path / "v4"), str(tmp_path / "a4"), image_size=96,
                                cache_dir=str(tmp_path / "a3"))
    assert other_size.aligned == first.aligned  # other settings: nothing is reused


def test_a_cache_folder_collects_the_crops_of_every_run(photos, tmp_path):
    cache = tmp_path / "cache"
    align_manifest(validated(photos, tmp_path / "v1"), str(tmp_path / "a1"), image_size=64, cache_dir=str(cache))
    assert AlignedDir.has_records(cache)
    rerun = align_manifest(validated(photos, tmp_path / "v2"), str(tmp_path / "a2"), image_size=64,
                           cache_dir=str(cache))
    assert rerun.aligned == 0


def test_output_inside_the_data_is_refused(photos, tmp_path):
    manifest = validated(photos, tmp_path / "validated")
    with pytest.raises(DataError, match="never writes into the dataset"):
        align_manifest(manifest, str(photos / "train" / "crops"), image_size=64, detector=default_detector())
