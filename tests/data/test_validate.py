"""The validation step: every kind of bad input gives exactly its finding, and the dataset is never touched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arcface.data import CODES, DataError, Manifest, resolve_roots, run_validation, validate_dataset


# ------------------------------------------------------------------------------------------------------------
# resolve_roots
# ------------------------------------------------------------------------------------------------------------
def test_resolve_roots_default_layout(tmp_path, monkeypatch):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "validation" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_roots("./", "./") == (str(tmp_path / "train"), str(tmp_path / "validation"))


def test_resolve_roots_val_and_direct_folders(tmp_path):
    (tmp_path / "r" / "train" / "a").mkdir(parents=True)
    (tmp_path / "r" / "val" / "a").mkdir(parents=True)
    assert resolve_roots(str(tmp_path / "r"), str(tmp_path / "r")) == (
        str(tmp_path / "r" / "train"), str(tmp_path / "r" / "val"))
    # Folders of identities, named anything.
    (tmp_path / "faces_tr" / "a").mkdir(parents=True)
    (tmp_path / "faces_va" / "a").mkdir(parents=True)
    assert resolve_roots(str(tmp_path / "faces_tr"), str(tmp_path / "faces_va")) == (
        str(tmp_path / "faces_tr"), str(tmp_path / "faces_va"))


def test_resolve_roots_errors_name_path_and_layout(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError) as e:
        resolve_roots(missing, missing)
    assert missing in str(e.value) and "does not exist" in str(e.value) and "<identity>/" in str(e.value)
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"holds train/ but no validation/ or val/"):
        resolve_roots(str(tmp_path / "only"), str(tmp_path / "only"))
    with pytest.raises(DataError, match="same folder"):
        resolve_roots(str(tmp_path / "only" / "train"), str(tmp_path / "only" / "train"))


# ------------------------------------------------------------------------------------------------------------
# Every kind of bad input, in one tree next to the real ORL sample
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def messy_tree(orl_tree, kit) -> Path:
    train, val = orl_tree / "train", orl_tree / "validation"
    s1 = train / "s1"
    face = kit.asymmetric_rgb()
    full = kit.jpeg_bytes(face)
    (s1 / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (s1 / "notes.txt").write_text("photographer: someone\n")
    (s1 / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 50)
    (s1 / "zero.jpg").write_bytes(b"")
    kit.save(s1 / "cmyk.jpg", Image.fromarray(face).convert("CMYK"))
    kit.save(s1 / "deep16.png", (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
    kit.save(s1 / "pal.gif", Image.fromarray(face).convert("P"))
    kit.save(s1 / "pal.png", Image.fromarray(face[::-1]).convert("P"))
    kit.save(s1 / "rgba.png", Image.fromarray(face).convert("RGBA"))
    kit.save(s1 / "bomb.png", np.full((300, 300, 3), 7, np.uint8))  # 90,000 px > max_pixels=50,000 below
    kit.save(s1 / "tiny.png", np.full((16, 16, 3), 99, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    kit.save(s1 / "rot.jpg", face, exif=exif.tobytes(), quality=95)
    shutil.copy(s1 / "1.pgm", s1 / "copy.pgm")  # duplicate within train, same identity
    os.symlink("..", s1 / "loop")  # back to the train root
    os.symlink("self", train / "s2" / "self")  # resolves to itself (ELOOP)
    with open(os.path.join(os.fsencode(train / "s3"), b"bad\xff.jpg"), "wb") as f:
        f.write(full)
    shutil.copy(train / "s4" / "1.pgm", train / "s3" / "other.pgm")  # same image under s3 and s4
    shutil.copy(train / "s2" / "1.pgm", val / "s2" / "leak.pgm")  # train image in validation
    shutil.rmtree(val / "s10")  # s10: train only
    kit.save(val / "s11" / "x.png", face[:, ::-1].copy())  # s11: validation only
    (train / "empty").mkdir()
    for extra in sorted((train / "s9").iterdir())[1:]:
        extra.unlink()  # s9: one training image, min_images=2 below
    (train / "README.txt").write_text("faces\n")
    return orl_tree


EXPECTED = {
    ("corrupt_image", "train/s1/trunc.jpg"),
    ("not_an_image", "train/s1/notes.txt"),
    ("system_file", "train/s1/.DS_Store"),
    ("empty_file", "train/s1/zero.jpg"),
    ("mode_cmyk", "train/s1/cmyk.jpg"),
    ("mode_high_bit_depth", "train/s1/deep16.png"),
    ("mode_palette", "train/s1/pal.gif"),
    ("mode_palette", "train/s1/pal.png"),
    ("mode_alpha", "train/s1/rgba.png"),
    ("decompression_bomb", "train/s1/bomb.png"),
    ("tiny_image", "train/s1/tiny.png"),
    ("exif_orientation", "train/s1/rot.jpg"),
    ("duplicate_in_split", "train/s1/copy.pgm"),
    ("symlink_loop", "train/s1/loop"),
    ("symlink_loop", "train/s2/self"),
    ("non_utf8_name", "train/s3/bad\\xff.jpg"),
    ("duplicate_label_conflict", "train/s3/other.pgm"),
    ("duplicate_label_conflict", "train/s4/1.pgm"),
    ("duplicate_across_splits", "validation/s2/leak.pgm"),
    ("identity_missing_in_validation", "train/s10"),
    ("identity_missing_in_train", "validation/s11"),
    ("empty_identity", "train/empty"),
    ("too_few_images", "train/s9"),
    ("stray_file", "train/README.txt"),
}


def _rel(root: Path, finding: dict) -> str:
    return os.path.relpath(finding["path"], str(root))


def test_every_bad_input_has_exactly_its_finding(messy_tree):
    result = validate_dataset(str(messy_tree), str(messy_tree), min_images=2, max_pixels=50_000)
    found = {(f["code"], _rel(messy_tree, f)) for f in result.report["findings"] if f["code"] != "mode_grey"}
    assert found == EXPECTED
    # Every finding carries the severity and action its code promises.
    for f in result.report["findings"]:
        assert (f["severity"], f["action"]) == CODES[f["code"]][:2]
    # Grey is reported for every readable PGM (as converted), including the duplicates.
    grey = {_rel(messy_tree, f) for f in result.report["findings"] if f["code"] == "mode_grey"}
    pgms = {str(p.relative_to(messy_tree)) for p in messy_tree.rglob("*.pgm")}
    assert grey == pgms
    assert result.ok is False

    m = result.manifest
    assert m.class_names == ["s1", "s10", "s2", "s3", "s4", "s5", "s6", "s7", "s8"]
    s1 = sorted(r.path for r in m.split("train") if r.identity == "s1")
    assert s1 == sorted([f"s1/{i}.pgm" for i in range(1, 8)] + [
        "s1/cmyk.jpg", "s1/deep16.png", "s1/pal.gif", "s1/pal.png", "s1/rgba.png", "s1/tiny.png", "s1/rot.jpg"])
    assert "s4/1.pgm" not in {r.path for r in m.split("train")}
    assert "s3/other.pgm" not in {r.path for r in m.split("train")}
    assert not [r for r in m.rows if r.identity in ("s9", "s11", "empty")]
    assert "s2/leak.pgm" not in {r.path for r in m.split("validation")}
    rot = next(r for r in m.rows if r.path == "s1/rot.jpg")
    assert (rot.orientation, rot.width, rot.height) == (6, 48, 64)  # stored 64x48, upright 48x64
    assert result.report["counts"]["train"]["images"] == len(m.split("train"))
    assert result.report["per_identity"]["s10"] == {"train": 7, "validation": 0}


def test_strict_lists_every_problem_and_its_fix(messy_tree, kit):
    before = kit.snapshot(messy_tree)
    with pytest.raises(DataError) as e:
        validate_dataset(str(messy_tree), str(messy_tree), min_images=2, max_pixels=50_000, strict=True)
    message = str(e.value)
    errors = {(c, p) for c, p in EXPECTED if CODES[c][0] == "error"}
    for code, rel in errors:
        assert f"{code}: {messy_tree / rel}:" in message
    for code in {c for c, _ in errors}:
        assert CODES[code][2] in message  # the fix
    for code, _ in EXPECTED - errors:  # warnings and info do not fail strict mode
        assert f"{code}:" not in message
    assert "without --strict" in message
    assert kit.snapshot(messy_tree) == before


def test_dataset_is_never_modified(messy_tree, kit, tmp_path):
    before = kit.snapshot(messy_tree)
    run_validation(str(messy_tree), str(messy_tree), str(tmp_path / "out"), min_images=2)
    assert kit.snapshot(messy_tree) == before


def test_outputs_and_manifest_round_trip(orl_tree, tmp_path):
    out = tmp_path / "out"
    result = run_validation(str(orl_tree), str(orl_tree), str(out), n_classes=10)
    assert sorted(os.listdir(out)) == ["manifest.json", "report.json", "report.md"]
    assert result.ok and result.report["counts"]["train"]["images"] == 70
    assert result.report["counts"]["validation"]["images"] == 30
    data = json.loads((out / "manifest.json").read_text())
    assert set(data) == {"version", "roots", "class_names", "rows"}
    m = Manifest.read(out / "manifest.json")
    assert m == result.manifest and m.sha256 == result.manifest.sha256
    assert len(m.sha256) == 64 and m.sha256 == result.report["manifest_sha256"]
    assert m.labels("validation")[:3] == [0, 0, 0] and m.class_names[1] == "s10"
    assert m.absolute_paths("train")[0] == str(orl_tree / "train" / "s1" / "1.pgm")
    # The hash does not depend on where the tree is mounted, only on what is in it.
    moved = Manifest(rows=m.rows, roots={"train": "/x", "validation": "/y"}, class_names=m.class_names)
    assert moved.sha256 == m.sha256
    changed = Manifest(rows=m.rows[1:], roots=m.roots, class_names=m.class_names)
    assert changed.sha256 != m.sha256
    report = json.loads((out / "report.json").read_text())
    assert report["findings_by_code"] == {"mode_grey": 100}
    md = (out / "report.md").read_text()
    assert "# Dataset validation" in md and "| train |" in md and "`mode_grey`" in md


def test_output_dir_inside_the_dataset_is_refused(orl_tree):
    with pytest.raises(DataError, match="never writes into the dataset"):
        validate_dataset(str(orl_tree), str(orl_tree), output_dir=str(orl_tree / "train" / "out"))


def test_n_classes_mismatch_names_the_actual_count(sample_dir):
    with pytest.raises(DataError) as e:
        validate_dataset(str(sample_dir), str(sample_dir), n_classes=5)
    assert "--n_classes=5" in str(e.value) and "10 usable identities" in str(e.value)
    assert "pass --n_classes=10" in str(e.value)


def test_fatal_problems_raise_even_without_strict(tmp_path, kit):
    (tmp_path / "a" / "train").mkdir(parents=True)
    (tmp_path / "a" / "validation" / "p").mkdir(parents=True)
    with pytest.raises(DataError, match="has no <identity>/ subfolders"):
        validate_dataset(str(tmp_path / "a"), str(tmp_path / "a"))
    (tmp_path / "a" / "train" / "p").mkdir()
    (tmp_path / "a" / "train" / "p" / "x.txt").write_text("not a face")
    kit.save(tmp_path / "a" / "validation" / "p" / "y.png", kit.asymmetric_rgb())
    with pytest.raises(DataError) as e:
        validate_dataset(str(tmp_path / "a"), str(tmp_path / "a"))
    assert "train folder" in str(e.value) and "no usable images (of 1 files)" in str(e.value)


def test_manifest_read_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*arcface validate"):
        Manifest.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        Manifest.read(tmp_path / "bad.json")


@pytest.mark.shared
def test_real_orl_and_lfw_faces_are_clean(shared_faces, tmp_path, kit):
    root = tmp_path / "real"
    for i in range(1, 6):  # ORL: 8 train, 2 validation each
        for k in range(1, 11):
            dest = root / ("train" if k <= 8 else "validation") / f"s{i}" / f"{k}.pgm"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared_faces / "orl_faces" / f"s{i}" / f"{k}.pgm", dest)
    lfw = shared_faces / "lfw_deepfunneled"
    people = [p for p in sorted(lfw.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3][:5]
    for person in people:
        images = sorted(person.glob("*.jpg"))
        for j, image in enumerate(images[:3]):
            dest = root / ("validation" if j == 2 else "train") / person.name / image.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, dest)
    before = kit.snapshot(root)
    result = validate_dataset(str(root), str(root), n_classes=10)
    assert {f["code"] for f in result.report["findings"]} == {"mode_grey"}
    assert len(result.manifest.split("train")) == 5 * 8 + 5 * 2
    lfw_rows = [r for r in result.manifest.rows if r.path.endswith(".jpg")]
    assert lfw_rows and {(r.width, r.height) for r in lfw_rows} == {(250, 250)}
    assert kit.snapshot(root) == before
