"""``arcface serve``: the model behind KServe's Python model server (``kserve.Model`` + ``kserve.ModelServer``).

KServe provides the HTTP server, the v1 and Open Inference Protocol v2 routes, readiness and liveness
(``/v2/health/ready``, ``/v2/health/live``, ``/v1/models/<name>``, ``/v2/models/<name>/ready``) and metrics;
this module only turns requests into images and embeddings into answers. Photos go through the Embedder's
own entrance (:meth:`arcface.embedding.Embedder.embed_encoded`: ``model_input`` with EXIF orientation), so the server's
embedding of a photo is ``arcface embed``'s.

v1 (``POST /v1/models/<name>:predict``), images as base64 (``{"b64": "..."}`` or the bare string)::

    {"instances": [{"image": {"b64": ...}}, ...]}                      -> {"predictions": [{"embedding": [...]}]}
    {"instances": [{"image_a": {"b64": ...}, "image_b": {"b64": ...}}]}
        -> {"predictions": [{"similarity": 0.71, "same": true, "threshold": 0.42}]}
    {"task": "search", "top_k": 5, "instances": [{"image": ...}]}     (needs ``--index``)
        -> {"predictions": [{"matches": [{"identity", "path", "score"}, ...]}]}

v2 (``POST /v2/models/<name>/infer``): a BYTES input ``image`` [N] (base64 strings in JSON) gives the FP32
output ``embedding`` [N, D]; BYTES inputs ``image_a`` and ``image_b`` give ``similarity`` FP32 [N] and, when
the model has an evaluated threshold, ``same`` BOOL [N].

A bad request is a 400 naming the field and the fix; the server goes on answering the next one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import warnings
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from arcface.data.validate import MAX_PIXELS
from arcface.embedding import EmbeddingError
from arcface.gallery import GalleryError, GalleryIndex, IdentifiedModel, load_model

DEFAULT_NAME = "arcface"
DEFAULT_MAX_INSTANCES = 64
TASKS = ("embed", "compare", "search")


@dataclasses.dataclass
class Task:
    """One request, decoded: what to do with which images, and how to answer (v1 dict or v2 response)."""

    kind: str
    images: dict[str, list[bytes]]        # field name ("image", or "image_a" and "image_b") -> one per instance
    v2_request: InferRequest | None = None
    top_k: int = 5


def decode_image_field(value: Any, field: str, max_pixels: int = MAX_PIXELS) -> bytes:
    """A base64 image (``{"b64": s}``, a bare string, or bytes from v2's binary extension) -> its bytes,
    checked to be an image within the pixel limit from its header alone (a bomb is never decoded)."""
    if isinstance(value, dict):
        if "b64" not in value:
            raise InvalidInput(f"{field} has no 'b64' key; send {{\"b64\": \"<base64 of the image file>\"}}")
        value, field = value["b64"], f"{field}.b64"
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{field} is not base64; send the image file's bytes base64-encoded "
                               "(e.g. `base64 -w0 face.jpg`)") from None
    else:
        raise InvalidInput(f"{field} is a {type(value).__name__}; send a base64 string of the image file")
    _check_image_header(data, field, max_pixels)
    return data


def _check_image_header(data: bytes, field: str, max_pixels: int) -> None:
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput(f"{field} is empty; send the bytes of a JPEG, PNG, GIF, BMP or PGM/PPM file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    except Image.DecompressionBombError as e:
        raise InvalidInput(f"{field} is a decompression bomb ({e}); send a photo under {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidInput(f"{field} is not an image; send the bytes of a JPEG, PNG, GIF, BMP or PGM/PPM "
                           "file") from None
    if width * height > max_pixels:
        raise InvalidInput(f"{field} is {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{max_pixels:,} (a decompression bomb is refused undecoded); downscale the photo")


class ArcFaceModel(kserve.Model):
    """The embedding model as a KServe predictor: embed, compare, and search the gallery index."""

    def __init__(self, name: str, model_path: str, index_path: str | None = None,
                 max_instances: int = DEFAULT_MAX_INSTANCES, max_pixels: int = MAX_PIXELS):
        super().__init__(name)
        self.model_path = model_path
        self.index_path = index_path
        self.max_instances = max_instances
        self.max_pixels = max_pixels
        self.model: IdentifiedModel | None = None
        self.index: GalleryIndex | None = None

    def load(self) -> bool:
        self.model = load_model(self.model_path)
        if self.index_path:
            self.index = GalleryIndex.load(self.index_path)
            self.index.check_model(self.model.model_id, what=f"the served model {self.model_path}")
        self.ready = True
        return self.ready

    # -- requests -> Task ----------------------------------------------------------------------------
    def preprocess(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> Task:
        if isinstance(payload, InferRequest):
            return self._v2_task(payload)
        if not isinstance(payload, dict):
            raise InvalidInput("the request body is not a JSON object; send {\"instances\": [...]}")
        return self._v1_task(payload)

    def _check_count(self, n: int, field: str) -> None:
        if n == 0:
            raise InvalidInput(f"{field} is an empty list; send at least one image")
        if n > self.max_instances:
            raise InvalidInput(f"{field} holds {n} images, over this server's limit of {self.max_instances} "
                               "(--max_instances); split the request")

    def _v1_task(self, body: dict) -> Task:
        if "instances" not in body:
            raise InvalidInput("the request has no 'instances' field; send {\"instances\": [{\"image\": "
                               "{\"b64\": \"...\"}}]}")
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InvalidInput("'instances' is not a list; send a list of {\"image\": {\"b64\": ...}} objects")
        self._check_count(len(instances), "instances")
        compare = isinstance(instances[0], dict) and "image_a" in instances[0]
        kind = body.get("task", "compare" if compare else "embed")
        if kind not in TASKS:
            raise InvalidInput(f"task {kind!r} is unknown; use one of {', '.join(TASKS)}")
        fields = ("image_a", "image_b") if kind == "compare" else ("image",)
        images: dict[str, list[bytes]] = {f: [] for f in fields}
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise InvalidInput(f"instances[{i}] is not an object; send {{\"{fields[0]}\": {{\"b64\": ...}}}}")
            for field in fields:
                if field not in instance:
                    raise InvalidInput(f"instances[{i}] has no '{field}' field; a {kind} request needs "
                                       f"{' and '.join(fields)} in every instance")
                images[field].append(decode_image_field(instance[field], f"instances[{i}].{field}",
                                                        self.max_pixels))
        top_k = body.get("top_k", 5)
        if kind == "search" and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise InvalidInput(f"top_k={top_k!r} is not a positive integer; send e.g. \"top_k\": 5")
        return Task(kind, images, top_k=top_k)

    def _v2_task(self, request: InferRequest) -> Task:
        inputs = {i.name: i for i in request.inputs}
        fields = ("image_a", "image_b") if "image_a" in inputs or "image_b" in inputs else ("image",)
        images: dict[str, list[bytes]] = {}
        for field in fields:
            if field not in inputs:
                raise InvalidInput(f"input '{field}' is missing (the request has {', '.join(inputs) or 'none'}); "
                                   "send a BYTES input 'image' to embed, or 'image_a' and 'image_b' to compare")
            tensor = inputs[field]
            if tensor.datatype != "BYTES":
                raise InvalidInput(f"input '{field}' has datatype {tensor.datatype}; send BYTES (base64 "
                                   "strings of the image files)")
            values = list(np.asarray(tensor.data, dtype=object).reshape(-1)) if tensor.data is not None else []
            self._check_count(len(values), f"input '{field}'")
            images[field] = [decode_image_field(v, f"input '{field}'[{i}]", self.max_pixels)
                             for i, v in enumerate(values)]
        if len(fields) == 2 and len(images["image_a"]) != len(images["image_b"]):
            raise InvalidInput(f"inputs 'image_a' ({len(images['image_a'])}) and 'image_b' "
                               f"({len(images['image_b'])}) differ in length; send one pair per position")
        return Task("compare" if len(fields) == 2 else "embed", images, v2_request=request)

    # -- Task -> results -----------------------------------------------------------------------------
    def _embed(self, images: list[bytes], field: str, flip_tta: bool) -> np.ndarray:
        try:
            return self.model.embedder.embed_encoded(images, [f"{field}[{i}]" for i in range(len(images))],
                                 flip_tta=flip_tta)
        except EmbeddingError as e:
            raise InvalidInput(str(e)) from None

    def predict(self, task: Task, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return {"task": task, **self._results(task)}  # postprocess answers in the request's protocol

    def _results(self, task: Task) -> dict[str, Any]:
        embedder = self.model.embedder
        if task.kind == "embed":
            return {"embedding": self._embed(task.images["image"], "image", flip_tta=False)}
        if task.kind == "compare":
            # The evaluated threshold holds for embeddings computed as the evaluation computed them.
            flip = embedder.threshold_flip_tta
            a = self._embed(task.images["image_a"], "image_a", flip)
            b = self._embed(task.images["image_b"], "image_b", flip)
            similarity = np.sum(a * b, axis=1)
            same = None if embedder.threshold is None else similarity >= embedder.threshold
            return {"similarity": similarity, "same": same, "threshold": embedder.threshold}
        if self.index is None:
            raise InvalidInput("task 'search' needs a gallery index; start the server with --index IDX "
                               "(built by `arcface enroll`)")
        probes = self._embed(task.images["image"], "image", self.index.flip_tta)
        try:
            return {"matches": self.index.search(probes, self.model.model_id, task.top_k)}
        except GalleryError as e:
            raise InvalidInput(str(e)) from None

    def postprocess(self, result: dict[str, Any], headers: dict[str, str] | None = None,
                    response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        """The answer in the request's protocol: a v1 dict of predictions, or a v2 InferResponse."""
        task = result["task"]
        return self._v2_response(task, result) if task.v2_request is not None else self._v1_response(task, result)

    def _v1_response(self, task: Task, result: dict[str, Any]) -> dict[str, Any]:
        if task.kind == "embed":
            return {"predictions": [{"embedding": row.tolist()} for row in result["embedding"]]}
        if task.kind == "compare":
            same = result["same"]
            return {"predictions": [{"similarity": float(s), "same": None if same is None else bool(same[i]),
                                     "threshold": result["threshold"]}
                                    for i, s in enumerate(result["similarity"])]}
        return {"predictions": [{"matches": [m.to_dict() for m in matches]} for matches in result["matches"]]}

    def _v2_response(self, task: Task, result: dict[str, Any]) -> InferResponse:
        if task.kind == "embed":
            embedding = result["embedding"]
            outputs = [InferOutput("embedding", list(embedding.shape), "FP32", embedding.tolist())]
        else:
            similarity = result["similarity"].astype(np.float32)
            outputs = [InferOutput("similarity", [len(similarity)], "FP32", similarity.tolist())]
            if result["same"] is not None:
                outputs.append(InferOutput("same", [len(similarity)], "BOOL", [bool(s) for s in result["same"]],
                                           parameters={"threshold": result["threshold"]}))
        return InferResponse(task.v2_request.id or "", self.name, outputs)


def serve(model_path: str, name: str = DEFAULT_NAME, http_port: int = 8080, index_path: str | None = None,
          max_instances: int = DEFAULT_MAX_INSTANCES, grpc_port: int | None = None) -> None:
    """Load the model (and index) and answer requests until stopped."""
    model = ArcFaceModel(name, model_path, index_path, max_instances)
    model.load()
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port or 8081, enable_grpc=grpc_port is not None,
                                workers=1)
    server.start([model])
