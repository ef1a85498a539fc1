"""A model that aligns: concurrent requests' photos meet in one face-detector call, each photo is decoded once,
and every caller still gets `arcface embed`'s embedding of its own photo (a faceless one only its own error)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from arcface.data import preprocess
from arcface.embedding import load_embedder
from arcface.mlops.serving import ArcFaceModel

from .conftest import sample_faces
from .test_faceless import aligning_model, b64  # noqa: F401  (a fixture, and the request encoding)

NAME = "faces"


@pytest.fixture(scope="module")
def faces(sample_dir) -> list[str]:
    """Six ORL photos of one size (92x112), of six people: MTCNN finds a face in each."""
    by_person = {}
    for path in sample_faces(sample_dir, "train"):
        by_person.setdefault(path.split("/")[-2], path)
    return sorted(by_person.values())[:6]


def embed_body(path: str) -> dict:
    return {"instances": [{"image": {"b64": b64(path)}}]}


def answer_all(model: ArcFaceModel, bodies: list[dict]) -> list[dict]:
    async def all_at_once():
        return await asyncio.gather(*(model(body) for body in bodies))

    return [answer for answer, _headers in asyncio.run(all_at_once())]


def test_concurrent_photos_share_detector_calls_and_each_gets_its_own_embedding(aligning_model, faces):  # noqa: F811
    reference = load_embedder(aligning_model).embed(faces)  # each photo's batch of the CLI: what it must equal
    model = ArcFaceModel(NAME, aligning_model, max_batch_size=8, max_batch_wait_ms=300)
    model.load()
    answers = answer_all(model, [embed_body(p) for p in faces])
    served = np.array([a["predictions"][0]["embedding"] for a in answers], np.float32)
    np.testing.assert_allclose(served, reference, atol=1e-6)
    assert model.detector.inputs == len(faces)
    assert model.detector.passes < len(faces), f"{len(faces)} requests took {model.detector.passes} detector calls"
    assert model.batcher.passes < len(faces)


def test_a_faceless_photo_in_a_shared_detector_call_fails_only_its_own_instance(aligning_model, faces, tmp_path):  # noqa: F811
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((112, 92, 3), 128, np.uint8)).save(blank)  # the faces' size: one detector batch
    model = ArcFaceModel(NAME, aligning_model, max_batch_size=8, max_batch_wait_ms=300)
    model.load()
    answers = answer_all(model, [embed_body(faces[0]), embed_body(str(blank)), embed_body(faces[1])])
    assert answers[1]["predictions"][0]["error"]["code"] == "no_face"
    served = np.array([answers[0]["predictions"][0]["embedding"], answers[2]["predictions"][0]["embedding"]])
    np.testing.assert_allclose(served, load_embedder(aligning_model).embed(faces[:2]), atol=1e-6)
    assert model.detector.passes < 3


def test_each_served_photo_is_decoded_once(aligning_model, faces, monkeypatch):  # noqa: F811
    model = ArcFaceModel(NAME, aligning_model)
    model.load()
    decoded = []
    decode = preprocess.decode_image

    def counting(contents):
        decoded.append(1)
        return decode(contents)

    monkeypatch.setattr(preprocess, "decode_image", counting)
    answer_all(model, [{"instances": [{"image": b64(p)} for p in faces[:3]]}])
    assert len(decoded) == 3  # the aligned crop goes to the model as pixels, never re-encoded and decoded
