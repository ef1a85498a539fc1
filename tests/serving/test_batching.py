"""Concurrent requests share forward passes (arcface.mlops.serving.MicroBatcher): each caller gets the embedding of its
own photos, as `arcface embed` computes it, and a bad photo in one request fails only that request."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from arcface.embedding import load_embedder
from arcface.mlops.serving import ArcFaceModel, MicroBatcher

from .conftest import metric, post_concurrently, running_server, sample_faces
from .test_server import b64, png_header_only

NAME = "faces"
CLIENTS = 8
# Batch composition can change a row's round-off (the pass's matrix products are blocked by batch size): 32 photos
# embedded in one pass differ from each embedded alone by at most 3e-8 on the tiny test model (measured).
ATOL = 1e-6


@pytest.fixture(scope="module")
def photos(sample_dir) -> list[str]:
    return sample_faces(sample_dir)[:CLIENTS]


@pytest.fixture(scope="module")
def reference(export_dir, photos) -> np.ndarray:
    """Each photo embedded on its own, as `arcface embed` does."""
    return load_embedder(export_dir).embed(photos)


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    # A 200 ms wait makes the concurrent requests meet in one pass however slowly this machine runs the clients.
    args = ["--model", str(export_dir), "--name", NAME, "--max_batch_size", str(CLIENTS), "--max_batch_wait_ms",
            "200"]
    with running_server(args, tmp_path_factory.mktemp("batching") / "server.log") as (url, _):
        yield url


def predict_url(url: str) -> str:
    return f"{url}/v1/models/{NAME}:predict"


def embed_body(path: str) -> dict:
    return {"instances": [{"image": {"b64": b64(path)}}]}


def test_concurrent_requests_share_passes_and_each_gets_its_own_embedding(server, photos, reference):
    passes = metric(server, "arcface_forward_passes_total")
    responses = post_concurrently([(predict_url(server), embed_body(p)) for p in photos])
    assert [r.status_code for r in responses] == [200] * CLIENTS, [r.text for r in responses]
    served = np.array([r.json()["predictions"][0]["embedding"] for r in responses], np.float32)
    np.testing.assert_allclose(served, reference, atol=ATOL)
    passes = metric(server, "arcface_forward_passes_total") - passes
    assert 1 <= passes < CLIENTS, f"{CLIENTS} concurrent requests took {passes} forward passes"


def test_a_bad_photo_fails_only_its_own_request(server, photos, reference):
    broken = base64.b64encode(png_header_only(32, 32)).decode()  # a valid header, undecodable pixels
    bodies = [embed_body(p) for p in photos[:3]] + [{"instances": [{"image": broken}]}]
    responses = post_concurrently([(predict_url(server), body) for body in bodies])
    assert [r.status_code for r in responses] == [200, 200, 200, 400], [r.text for r in responses]
    assert "image[0] is not a readable image" in responses[3].json()["error"]
    served = np.array([r.json()["predictions"][0]["embedding"] for r in responses[:3]], np.float32)
    np.testing.assert_allclose(served, reference[:3], atol=ATOL)


def test_v2_and_compare_requests_batch_with_v1_ones(server, photos, reference, export_dir):
    embedder = load_embedder(export_dir)
    similarity = float(np.dot(*embedder.embed(photos[:2], flip_tta=embedder.threshold_flip_tta)))
    compare = {"instances": [{"image_a": b64(photos[0]), "image_b": b64(photos[1])}]}
    v2 = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(p) for p in photos[2:4]]}]}
    compared, single, inferred = post_concurrently([(predict_url(server), compare),
                                                    (predict_url(server), embed_body(photos[4])),
                                                    (f"{server}/v2/models/{NAME}/infer", v2)])
    assert [r.status_code for r in (compared, single, inferred)] == [200] * 3
    assert compared.json()["predictions"][0]["similarity"] == pytest.approx(similarity, abs=ATOL)
    np.testing.assert_allclose(single.json()["predictions"][0]["embedding"], reference[4], atol=ATOL)
    output = inferred.json()["outputs"][0]
    np.testing.assert_allclose(np.array(output["data"]).reshape(output["shape"]), reference[2:4], atol=ATOL)


# ---------------------------------------------------------------------------------------------------
# In process: the model and its batcher driven through asyncio, every pass counted
# ---------------------------------------------------------------------------------------------------
def test_the_model_batches_concurrent_calls_in_process(export_dir, photos, reference):
    model = ArcFaceModel(NAME, str(export_dir), max_batch_size=CLIENTS, max_batch_wait_ms=100)
    model.load()

    async def all_at_once():
        return await asyncio.gather(*(model(embed_body(p)) for p in photos))

    answers = [answer for answer, _headers in asyncio.run(all_at_once())]  # KServe's __call__: (body, headers)
    served = np.array([a["predictions"][0]["embedding"] for a in answers], np.float32)
    np.testing.assert_allclose(served, reference, atol=ATOL)
    assert model.batcher.passes < CLIENTS and model.batcher.inputs == CLIENTS
    assert model.queued == 0  # every admitted image is counted out again


def test_the_batcher_bounds_passes_and_never_splits_a_request():
    sizes: list[int] = []

    def forward(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * np.ones((1, 2), np.float32)

    batcher = MicroBatcher(forward, max_batch_size=4, max_wait_s=0.05)
    requests_ = [np.full((n, 2, 2, 3), i, np.float32) for i, n in enumerate([1, 2, 3, 1, 6, 2])]

    async def all_at_once():
        return await asyncio.gather(*(batcher(x) for x in requests_))

    answers = asyncio.run(all_at_once())
    for x, rows in zip(requests_, answers, strict=True):
        np.testing.assert_array_equal(rows, forward(x))  # each caller its own rows, in its own order
    del sizes[-len(requests_):]  # the reference calls just above
    # Whole requests, in arrival order: [1, 2] (3 does not fit), [3, 1], the 6 alone, then [2].
    assert sizes == [3, 4, 6, 2]
    assert batcher.passes == 4 and batcher.inputs == 15
