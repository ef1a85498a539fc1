"""`arcface serve` as a real server: started on a free loopback port in a subprocess, stopped by its pid."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

# The [test] extra installs kserve and faiss: a missing or broken install fails here, it does not skip.
import faiss  # noqa: F401
import kserve  # noqa: F401
import numpy as np
import pytest
import requests

from arcface.cli import main as cli
from arcface.embedding import load_embedder
from arcface.mlops.gallery import GalleryIndex, enroll, load_model

from .conftest import THRESHOLD, running_server, sample_faces

NAME = "faces"
MAX_INSTANCES = 4


def b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def index_dir(export_dir, sample_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("index") / "idx"
    enroll(load_model(export_dir), str(sample_dir / "train"), str(path))
    return path


@pytest.fixture(scope="module")
def server(export_dir, index_dir, tmp_path_factory):
    """Started with --return_paths: search answers carry the enrolled photos' paths (test_listen.py: not without)."""
    args = ["--model", str(export_dir), "--name", NAME, "--index", str(index_dir), "--max_instances",
            str(MAX_INSTANCES), "--return_paths"]
    with running_server(args, tmp_path_factory.mktemp("server") / "server.log") as (url, _):
        yield url


def v1(url: str, body) -> requests.Response:
    return requests.post(f"{url}/v1/models/{NAME}:predict", json=body, timeout=60)


def v2(url: str, inputs: list[dict]) -> requests.Response:
    return requests.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": inputs}, timeout=60)


def embed_cli(export_dir: Path, paths: list[str], tmp_path: Path) -> np.ndarray:
    out = tmp_path / "reference.npy"
    assert cli(["embed", "--model", str(export_dir), *paths, "--output", str(out)]) == 0
    return np.load(out)


# ---------------------------------------------------------------------------------------------------
def test_health_endpoints(server):
    assert requests.get(f"{server}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{server}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{server}/v1/models/{NAME}", timeout=10).json() == {"name": NAME, "ready": True}
    assert requests.get(f"{server}/v2/models/{NAME}/ready", timeout=10).json()["ready"] is True
    assert requests.get(f"{server}/v1/models/nobody", timeout=10).status_code == 404


def test_v1_and_v2_embeddings_equal_arcface_embed(server, export_dir, sample_dir, tmp_path):
    paths = sample_faces(sample_dir)[:MAX_INSTANCES]
    reference = embed_cli(export_dir, paths, tmp_path)
    response = v1(server, {"instances": [{"image": {"b64": b64(p)}} for p in paths]})
    assert response.status_code == 200, response.text
    served = np.array([p["embedding"] for p in response.json()["predictions"]], np.float32)
    np.testing.assert_allclose(served, reference, atol=1e-5)
    response = v2(server, [{"name": "image", "shape": [len(paths)], "datatype": "BYTES",
                            "data": [b64(p) for p in paths]}])
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "embedding" and output["shape"] == list(reference.shape)
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(output["shape"]), reference, atol=1e-5)


def test_compare_at_the_cards_threshold(server, export_dir, sample_dir):
    a, b, c = sample_faces(sample_dir)[:3]
    embedder = load_embedder(export_dir)  # the card says the threshold was chosen with flip TTA
    reference = [float(np.dot(*embedder.embed([x, y], flip_tta=True))) for x, y in ((a, b), (a, c))]
    response = v1(server, {"instances": [{"image_a": {"b64": b64(a)}, "image_b": b64(b)},
                                         {"image_a": {"b64": b64(a)}, "image_b": {"b64": b64(c)}}]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    np.testing.assert_allclose([p["similarity"] for p in predictions], reference, atol=1e-5)
    assert [p["same"] for p in predictions] == [s >= THRESHOLD for s in reference]
    assert {p["threshold"] for p in predictions} == {THRESHOLD}
    response = v2(server, [{"name": "image_a", "shape": [1], "datatype": "BYTES", "data": [b64(a)]},
                           {"name": "image_b", "shape": [1], "datatype": "BYTES", "data": [b64(b)]}])
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["similarity"]["data"], reference[:1], atol=1e-5)
    assert outputs["same"]["data"] == [reference[0] >= THRESHOLD]


def test_search_endpoint_equals_brute_force_over_the_index(server, index_dir, sample_dir, export_dir):
    probes = sample_faces(sample_dir)[:MAX_INSTANCES]
    response = v1(server, {"task": "search", "top_k": 3, "instances": [{"image": b64(p)} for p in probes]})
    assert response.status_code == 200, response.text
    index = GalleryIndex.load(index_dir)
    embedded = load_embedder(export_dir).embed(probes, flip_tta=index.flip_tta)
    scores = embedded @ index.vectors.T  # exact cosine against every enrolled vector, in numpy
    for prediction, row in zip(response.json()["predictions"], scores, strict=True):
        best = np.argsort(-row, kind="stable")[:3]
        assert [m["path"] for m in prediction["matches"]] == [index.records[i].path for i in best]
        np.testing.assert_allclose([m["score"] for m in prediction["matches"]], row[best], atol=1e-5)


BAD_REQUESTS = {
    "not base64": ({"instances": [{"image": {"b64": "not base64!"}}]}, "instances[0].image.b64 is not base64"),
    "not an image": ({"instances": [{"image": base64.b64encode(b"plain text").decode()}]},
                     "instances[0].image is not an image"),
    "decompression bomb": ({"instances": [{"image": base64.b64encode(png_header_only(8000, 6000)).decode()}]},
                           "instances[0].image is 8000x6000 = 48,000,000 pixels, over the limit"),
    "empty list": ({"instances": []}, "instances is an empty list"),
    "too many instances": (None, f"over this server's limit of {MAX_INSTANCES} (--max_instances)"),
    "missing instances": ({"images": []}, "no 'instances' field"),
    "missing image field": ({"instances": [{"picture": "x"}]}, "instances[0] has no 'image' field"),
    "missing image_b": (None, "instances[0] has no 'image_b' field"),
    "missing b64 key": ({"instances": [{"image": {"data": "x"}}]}, "instances[0].image has no 'b64' key"),
    "unknown task": ({"task": "guess", "instances": [{"image": "x"}]}, "task 'guess' is unknown"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_400_naming_the_field_and_the_server_answers_the_next(case, server, sample_dir):
    face = b64(sample_faces(sample_dir)[0])
    body, message = BAD_REQUESTS[case]
    if case == "too many instances":
        body = {"instances": [{"image": face}] * (MAX_INSTANCES + 1)}
    elif case == "missing image_b":
        body = {"instances": [{"image_a": face}]}
    response = v1(server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert v1(server, {"instances": [{"image": face}]}).status_code == 200


def test_bad_v2_requests(server, sample_dir):
    face = b64(sample_faces(sample_dir)[0])
    cases = [([{"name": "picture", "shape": [1], "datatype": "BYTES", "data": [face]}], "input 'image' is missing"),
             ([{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}], "input 'image'[0] is not base64"),
             ([{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}], "has datatype FP32"),
             ([{"name": "image_a", "shape": [1], "datatype": "BYTES", "data": [face]}], "input 'image_b' is missing")]
    for inputs, message in cases:
        response = v2(server, inputs)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    assert v2(server, [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [face]}]).status_code == 200
