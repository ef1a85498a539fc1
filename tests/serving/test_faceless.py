"""One faceless photo does not sink a batch: `arcface embed` and the server report it (file or instance, code,
fix) and embed the others, exactly as each would be embedded without it; --on_no_face fail and whole.

The model aligns (its metadata records MTCNN alignment, as training writes it); the face is a real ORL photo,
the faceless 'photo' a flat grey image in which the detector finds nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from kserve.errors import InvalidInput
from PIL import Image

from arcface import cli as cli_module
from arcface import embedding
from arcface.cli import main as cli
from arcface.embedding import EXIT_SKIPPED, EmbeddingError, load_embedder
from arcface.mlops.gallery import GalleryIndex, enroll, load_model
from arcface.mlops.serving import ArcFaceModel
from tests.data.test_align_entrances import pixel_model

from .conftest import running_server

NAME = "faces"


@pytest.fixture(scope="module")
def aligning_model(tmp_path_factory) -> str:
    """A .keras model whose metadata says it was trained on MTCNN-aligned crops: photos are aligned first."""
    path = pixel_model(tmp_path_factory.mktemp("aligning"), {"method": "mtcnn", "image_size": 64})
    assert load_embedder(path).align == "mtcnn"
    return path


@pytest.fixture(scope="module")
def photos(sample_dir, tmp_path_factory) -> dict[str, str]:
    """Two real faces (ORL PGMs, where MTCNN finds the face) and a flat grey image without one."""
    folder = tmp_path_factory.mktemp("photos")
    faces = sorted((sample_dir / "train" / "s1").iterdir())
    shutil.copy(faces[0], folder / "face.pgm")
    shutil.copy(sorted((sample_dir / "train" / "s2").iterdir())[0], folder / "face2.pgm")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(folder / "blank.png")
    return {name: str(folder / file) for name, file in (("face", "face.pgm"), ("face2", "face2.pgm"),
                                                          ("blank", "blank.png"))}


def b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


# ---------------------------------------------------------------------------------------------------
# The embedder and `arcface embed`
# ---------------------------------------------------------------------------------------------------
def test_a_faceless_photo_is_skipped_and_the_others_embedded_as_without_it(aligning_model, photos):
    embedder = load_embedder(aligning_model)
    result = embedder.embed_many([photos["face"], photos["blank"], photos["face2"]])
    assert result.kept == [0, 2]
    (skipped,) = result.skipped
    assert (skipped.index, skipped.name, skipped.code) == (1, photos["blank"], "no_face")
    assert "face is visible" in skipped.fix and "--on_no_face whole" in skipped.fix
    np.testing.assert_array_equal(result.embeddings, embedder.embed([photos["face"], photos["face2"]]))
    alone = embedder.embed_many([photos["face"], photos["blank"]])
    np.testing.assert_array_equal(alone.embeddings, embedder.embed([photos["face"]]))


def test_embed_command_reports_the_skipped_photo_and_its_exit_status_counts_it(aligning_model, photos, tmp_path,
                                                                               capsys):
    output = tmp_path / "out.jsonl"
    status = cli(["embed", "--model", aligning_model, photos["face"], photos["blank"], "-o", str(output)])
    assert status == EXIT_SKIPPED == cli_module.EXIT_SKIPPED
    captured = capsys.readouterr()
    assert f"skipped {photos['blank']}: no_face: no face found; use a photo in which the face is visible" in captured.err
    assert "wrote 1 embeddings" in captured.out and "skipped 1 of 2 photos without a usable face" in captured.out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["path"] for r in records] == [photos["face"]]
    np.testing.assert_array_equal(np.array([records[0]["embedding"]], np.float32),
                                  load_embedder(aligning_model).embed([photos["face"]]))
    assert cli(["embed", "--model", aligning_model, photos["face"], "-o", str(tmp_path / "all.npy")]) == 0


def test_fail_mode_stops_naming_the_file(aligning_model, photos, tmp_path, capsys):
    output = tmp_path / "out.npy"
    assert cli(["embed", "--model", aligning_model, photos["face"], photos["blank"], "-o", str(output),
                "--on_no_face", "fail"]) == 2
    assert f"{photos['blank']}: no_face: no face found" in capsys.readouterr().err
    assert not output.exists()
    with pytest.raises(EmbeddingError, match=r"blank\.png: no_face: .*--on_no_face whole"):
        load_embedder(aligning_model).embed([photos["face"], photos["blank"]])  # one row per image: fails


def test_whole_mode_embeds_the_whole_image_as_align_none_does(aligning_model, photos, capsys):
    embedder, plain = load_embedder(aligning_model), load_embedder(aligning_model, align="none")
    alone = embedder.embed_many([photos["blank"]], on_no_face="whole")
    assert alone.kept == [0] and alone.skipped == [] and [f.code for f in alone.whole] == ["no_face"]
    np.testing.assert_array_equal(alone.embeddings, plain.embed([photos["blank"]]))
    mixed = embedder.embed_many([photos["face"], photos["blank"]], on_no_face="whole")
    np.testing.assert_allclose(mixed.embeddings[1], plain.embed([photos["blank"]])[0], atol=1e-6)
    np.testing.assert_allclose(mixed.embeddings[0], embedder.embed([photos["face"]])[0], atol=1e-6)


def test_compare_reads_a_faceless_photo_whole_only_when_told(aligning_model, photos, capsys):
    assert cli(["compare", "--model", aligning_model, photos["face"], photos["blank"], "--threshold", "0.5"]) == 2
    assert f"{photos['blank']}: no_face: no face found" in capsys.readouterr().err
    assert cli(["compare", "--model", aligning_model, photos["face"], photos["blank"], "--threshold", "0.5",
                "--on_no_face", "whole"]) == 0
    a, b = load_embedder(aligning_model).embed([photos["face"], photos["blank"]], on_no_face="whole")
    assert f"similarity: {float(a @ b):.4f}" in capsys.readouterr().out


def test_every_photo_faceless_writes_nothing_and_says_why(aligning_model, photos, tmp_path, capsys):
    output = tmp_path / "out.csv"
    assert cli(["embed", "--model", aligning_model, photos["blank"], "-o", str(output)]) == 2
    assert "none of the 1 image(s) has a usable face" in capsys.readouterr().err and not output.exists()
    with pytest.raises(EmbeddingError, match="--on_no_face='maybe' is unknown; choose one of: skip, fail, whole"):
        embedding.embed_command(aligning_model, [photos["face"]], str(output), on_no_face="maybe")


def gallery_with_a_blank(sample_dir: Path, blank: str, folder: Path) -> Path:
    for identity in ("s1", "s2", "s3"):
        shutil.copytree(sample_dir / "train" / identity, folder / identity)
    shutil.copy(blank, folder / "s1" / "blank.png")
    return folder


def test_enroll_leaves_the_faceless_photo_out_and_says_so(aligning_model, photos, sample_dir, tmp_path, capsys):
    gallery = gallery_with_a_blank(sample_dir, photos["blank"], tmp_path / "people")
    assert cli(["enroll", "--model", aligning_model, "--gallery", str(gallery), "--index", str(tmp_path / "idx")]) \
        == EXIT_SKIPPED
    captured = capsys.readouterr()
    assert f"skipped {gallery / 's1' / 'blank.png'}: no_face: no face found" in captured.err
    assert "1 skipped without a usable face" in captured.out
    (gallery / "s1" / "blank.png").unlink()  # the same gallery without it: the same vectors
    clean = enroll(load_model(aligning_model), str(gallery), str(tmp_path / "clean"))
    index = GalleryIndex.load(tmp_path / "idx")
    assert [r.path for r in index.records] == [r.path for r in clean.index.records]
    np.testing.assert_array_equal(index.vectors, clean.index.vectors)
    assert cli(["enroll", "--model", aligning_model, "--gallery", str(gallery), "--index", str(tmp_path / "fail"),
                "--on_no_face", "fail", "--kind", "exact"]) == 0  # nothing faceless left: enrolled


def test_search_gallery_skips_the_faceless_gallery_photo(aligning_model, photos, sample_dir, tmp_path, capsys):
    gallery = gallery_with_a_blank(sample_dir, photos["blank"], tmp_path / "people")
    args = ["search", "--model", aligning_model, "--gallery", str(gallery), photos["face"], "--top_k", "3"]
    assert cli(args) == EXIT_SKIPPED
    captured = capsys.readouterr()
    assert f"skipped {gallery / 's1' / 'blank.png'}: no_face" in captured.err
    ranked = captured.out.splitlines()
    (gallery / "s1" / "blank.png").unlink()
    assert cli(args) == 0
    assert capsys.readouterr().out.splitlines() == ranked  # the same ranking as without the blank
    shutil.copy(photos["blank"], gallery / "s1" / "blank.png")
    assert cli([*args, "--on_no_face", "fail"]) == 2
    assert "blank.png: no_face" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# The server: per-instance answers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gallery_index(aligning_model, sample_dir, tmp_path_factory) -> Path:
    gallery = tmp_path_factory.mktemp("gallery")
    for identity in ("s1", "s2", "s3"):
        shutil.copytree(sample_dir / "train" / identity, gallery / identity)
    path = gallery.parent / (gallery.name + ".idx")
    enroll(load_model(aligning_model), str(gallery), str(path))
    return path


@pytest.fixture(scope="module")
def server(aligning_model, gallery_index, tmp_path_factory):
    args = ["--model", aligning_model, "--name", NAME, "--index", str(gallery_index)]
    with running_server(args, tmp_path_factory.mktemp("server") / "server.log") as (url, _):
        yield url


def test_server_answers_a_faceless_instance_with_an_error_entry_and_the_others_with_embeddings(
        server, aligning_model, photos):
    order = [photos["face"], photos["blank"], photos["face2"]]
    response = requests.post(f"{server}/v1/models/{NAME}:predict", timeout=120,
                             json={"instances": [{"image": b64(p)} for p in order]})
    assert response.status_code == 200, response.text
    first, error, third = response.json()["predictions"]
    assert error == {"error": {"code": "no_face", "message": "image[1]: no face found",
                               "fix": error["error"]["fix"]}} and "face is visible" in error["error"]["fix"]
    reference = load_embedder(aligning_model).embed([photos["face"], photos["face2"]])
    np.testing.assert_array_equal(np.array([first["embedding"], third["embedding"]], np.float32), reference)

    response = requests.post(f"{server}/v2/models/{NAME}/infer", timeout=120, json={"inputs": [
        {"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(photos["blank"]), b64(photos["face"])]}]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["error"]["data"][0].startswith("image[0]: no_face: no face found; ")
    assert outputs["error"]["data"][1] == ""
    rows = np.array(outputs["embedding"]["data"], np.float32).reshape(outputs["embedding"]["shape"])
    assert not rows[0].any()
    np.testing.assert_array_equal(rows[1], reference[0])


def test_server_compare_and_search_answer_per_instance(server, photos):
    face, blank = b64(photos["face"]), b64(photos["blank"])
    response = requests.post(f"{server}/v1/models/{NAME}:predict", timeout=120, json={"instances": [
        {"image_a": face, "image_b": blank}, {"image_a": face, "image_b": face}]})
    assert response.status_code == 200, response.text
    faceless, same = response.json()["predictions"]
    assert faceless["error"]["code"] == "no_face" and faceless["error"]["message"] == "image_b[0]: no face found"
    assert same["similarity"] == pytest.approx(1.0, abs=1e-5)
    response = requests.post(f"{server}/v1/models/{NAME}:predict", timeout=120, json={
        "task": "search", "top_k": 2, "instances": [{"image": blank}, {"image": face}]})
    assert response.status_code == 200, response.text
    faceless, found = response.json()["predictions"]
    assert faceless["error"]["code"] == "no_face"
    assert found["matches"][0]["identity"] == "s1" and len(found["matches"]) == 2


def test_server_fail_mode_refuses_the_request_naming_the_instance(aligning_model, photos):
    model = ArcFaceModel(NAME, aligning_model, on_no_face="fail")
    model.load()
    task = model.preprocess({"instances": [{"image": b64(photos["face"])}, {"image": b64(photos["blank"])}]})
    with pytest.raises(InvalidInput, match=r"image\[1\]: no_face: no face found"):
        asyncio.run(model.predict(task))
    whole = ArcFaceModel(NAME, aligning_model, on_no_face="whole")
    whole.load()
    answer = whole.postprocess(asyncio.run(whole.predict(whole.preprocess({"instances": [{"image": b64(photos["blank"])}]}))))
    np.testing.assert_array_equal(np.array([answer["predictions"][0]["embedding"]], np.float32),
                                  load_embedder(aligning_model, align="none").embed([photos["blank"]]))
