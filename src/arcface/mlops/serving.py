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
        -> {"predictions": [{"matches": [{"identity", "score"}, ...]}]}   ("path" too with ``--return_paths``)

v2 (``POST /v2/models/<name>/infer``): a BYTES input ``image`` [N] (base64 strings in JSON) gives the FP32
output ``embedding`` [N, D]; BYTES inputs ``image_a`` and ``image_b`` give ``similarity`` FP32 [N] and, when
the model has an evaluated threshold, ``same`` BOOL [N].

An instance in which the face detector finds no usable face (a model trained on aligned crops) does not fail
the request (``--on_no_face skip``, the default): the other instances get their results, and it gets::

    v1: {"predictions": [{"embedding": [...]}, {"error": {"code": "no_face", "message": "image[1]: no face
         found", "fix": "use a photo in which the face is visible, ..."}}]}     (a pair: either photo)
    v2: its ``embedding`` row is zeros (``similarity`` 0, ``same`` false), and a BYTES output ``error`` [N],
        present only then, holds "image[1]: no_face: no face found; <fix>" for it and "" for the others.

``--on_no_face fail`` makes such a request a 400; ``whole`` embeds the whole image instead.
A bad request is a 400 naming the field and the fix; the server goes on answering the next one.

Concurrent requests share forward passes (:class:`MicroBatcher`). KServe 0.21's Python server has no batcher of
its own; it awaits an ``async def predict``, so the model batches: each request decodes (and aligns) its photos
in a worker thread, queues their model inputs, and one task runs a single forward pass for up to
``--max_batch_size`` queued inputs, waiting at most ``--max_batch_wait_ms`` for more, then hands each request
its own rows. A bad photo fails only its own request (or instance), since it never reaches the queue. KServe's
cluster batcher (the InferenceService's ``spec.predictor.batcher``, an agent sidecar) is not used: it merges the
``instances`` of v1 requests into one request, so one request's bad photo would be a 400 for all of them, and it
knows neither v2 nor our ``task`` field. Past ``--max_queue`` images admitted and not yet answered, a request is
refused at once with 503 and ``Retry-After`` (FastAPI's ``HTTPException``, which KServe's app answers with its
status and headers); readiness stays true, since the model is loaded and answering.

The server has no authentication: it listens on 127.0.0.1 unless ``--host`` says otherwise. The
InferenceService (``pipeline.py serve-manifest``) passes ``--host 0.0.0.0`` and relies on the cluster's
ingress to authenticate callers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.metadata
import io
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kserve
import numpy as np
from fastapi import HTTPException
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Counter

from arcface.data.validate import MAX_PIXELS
from arcface.embedding import Embedded, EmbeddingError, NoFace, Prepared, check_on_no_face
from arcface.mlops.gallery import GalleryError, GalleryIndex, IdentifiedModel, Match, load_model
from arcface.mlops.serving_defaults import (
    ALL_INTERFACES,
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_WAIT_MS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_NAME,
    DEFAULT_WORKERS,
    RETRY_AFTER_S,
)

TASKS = ("embed", "compare", "search")
FORWARD_PASSES = Counter("arcface_forward_passes", "forward passes run by the serving micro-batcher")
BATCHED_INPUTS = Counter("arcface_batched_inputs", "model inputs embedded by the serving micro-batcher")
DETECTOR_PASSES = Counter("arcface_detector_passes", "face detector calls run by the serving micro-batcher")
DETECTED_PHOTOS = Counter("arcface_detected_photos", "photos searched for faces by the serving micro-batcher")
OVERLOADED = Counter("arcface_overloaded_requests", "requests refused with 503 because the queue was full")


@dataclasses.dataclass
class _Waiting:
    inputs: Sequence[Any]  # an array [N, ...] or a list of N items
    future: asyncio.Future


def _join_arrays(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts)


def _join_lists(parts: list[Sequence[Any]]) -> list[Any]:
    return [item for part in parts for item in part]


class MicroBatcher:
    """Inputs from concurrent requests -> shared passes of one function, each caller awaiting its own rows.

    One worker task (started in the server's event loop on first use) takes whole requests' inputs from the queue
    until ``max_batch_size`` rows are gathered or ``max_wait_s`` has passed since the first, and runs one pass
    in a thread of its own, so the event loop goes on accepting requests (which queue for the next pass). The
    embedding model's forward pass batches arrays; the face detector batches lists of photos (``join``).
    Only that thread ever calls ``forward``: MTCNN's detector is not known to be safe to call from two threads."""

    def __init__(self, forward: Callable[[Any], Sequence[Any]], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_wait_s: float = DEFAULT_MAX_BATCH_WAIT_MS / 1000,
                 join: Callable[[list[Any]], Any] = _join_arrays, counters: tuple[Counter, Counter] | None = None,
                 name: str = "forward"):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size={max_batch_size} and max_wait_s={max_wait_s}: the batch size must be "
                             ">= 1 and the wait >= 0; pass e.g. --max_batch_size 32 --max_batch_wait_ms 10")
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.join = join
        self.counters = counters or (FORWARD_PASSES, BATCHED_INPUTS)
        self.name = name
        self.passes = 0          # passes run, and the inputs they took: for tests and logs
        self.inputs = 0
        # One pass at a time: TensorFlow already spreads a pass over the cores, and passes in parallel would
        # only compete for them.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"arcface-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        """The queue and worker belong to the running loop (the server's; a test may run several loops)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._arrived = asyncio.Event()
        self._worker = loop.create_task(self._run(), name=f"arcface-{self.name}-batcher")

    async def __call__(self, inputs: Sequence[Any]) -> Sequence[Any]:
        """The pass's rows for ``inputs`` (N of them), computed together with other callers' inputs."""
        self._start()
        waiting = _Waiting(inputs, self._loop.create_future())
        self._queue.append(waiting)
        self._arrived.set()
        return await waiting.future

    async def embed(self, inputs: np.ndarray, flip_tta: bool) -> np.ndarray:
        """As :meth:`arcface.embedding.Embedder._embed_batch`: the mirror images' rows summed in, in the same pass."""
        if not flip_tta:
            return await self(inputs)
        rows = await self(np.concatenate([inputs, np.ascontiguousarray(inputs[:, :, ::-1, :])]))
        return rows[:len(inputs)] + rows[len(inputs):]

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            batch = await self._gather()
            if batch:
                await self._forward(batch)

    async def _gather(self) -> list[_Waiting]:
        """Whole requests from the queue: up to max_batch_size rows (one larger request alone), waiting at most
        max_wait_s after the first for more to arrive."""
        deadline = self._loop.time() + self.max_wait_s
        batch: list[_Waiting] = []
        rows = 0
        while True:
            while self._queue and (not batch or rows + len(self._queue[0].inputs) <= self.max_batch_size):
                waiting = self._queue.popleft()
                if not waiting.future.done():  # a caller that went away needs no pass
                    batch.append(waiting)
                    rows += len(waiting.inputs)
            remaining = deadline - self._loop.time()
            if self._queue or rows >= self.max_batch_size or remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        if not self._queue:
            self._arrived.clear()
        return batch

    async def _forward(self, batch: list[_Waiting]) -> None:
        inputs = self.join([w.inputs for w in batch])
        try:
            rows = await self._loop.run_in_executor(self._executor, self._pass, inputs)
        except Exception as e:  # every caller in the pass gets the error; the worker goes on with the next pass
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(InferenceError(f"the {self.name} pass failed: {e}"))
            return
        start = 0
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_result(rows[start:start + len(waiting.inputs)])
            start += len(waiting.inputs)

    def _pass(self, inputs: Sequence[Any]) -> Sequence[Any]:
        self.passes += 1
        self.inputs += len(inputs)
        passes, taken = self.counters
        passes.inc()
        taken.inc(len(inputs))
        return self.forward(inputs)


def _forward_rows(forward: Callable[[np.ndarray], Any], inputs: np.ndarray) -> np.ndarray:
    return np.asarray(forward(inputs), dtype=np.float32)


def overloaded(queued: int, max_queue: int) -> HTTPException:
    """503 with Retry-After: FastAPI's HTTPException keeps its status and headers through KServe's app (KServe's own
    503 errors, ModelNotReady and ServerNotReady, carry no Retry-After and would claim the model is not ready)."""
    return HTTPException(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                         detail=f"the server is busy: {queued} images are queued, the limit is {max_queue} "
                                f"(--max_queue); retry after {RETRY_AFTER_S} s, or add replicas")


@dataclasses.dataclass
class Task:
    """One request, decoded: what to do with which images, and how to answer (v1 dict or v2 response)."""

    kind: str
    images: dict[str, list[bytes]]        # field name ("image", or "image_a" and "image_b") -> one per instance
    v2_request: InferRequest | None = None
    top_k: int = 5

    def count(self) -> int:
        return sum(len(images) for images in self.images.values())


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
                 max_instances: int = DEFAULT_MAX_INSTANCES, max_pixels: int = MAX_PIXELS,
                 on_no_face: str = "skip", return_paths: bool = False,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_batch_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS,
                 max_queue: int = DEFAULT_MAX_QUEUE):
        super().__init__(name)
        self._arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        check_on_no_face(on_no_face)
        if max_queue < max_instances:
            raise ValueError(f"--max_queue {max_queue} is below --max_instances {max_instances}: a full request "
                             "would always be refused; raise --max_queue or lower --max_instances")
        self.max_batch_size = max_batch_size
        self.max_batch_wait_ms = max_batch_wait_ms
        self.max_queue = max_queue
        self.queued = 0  # images admitted and not yet answered
        self.batcher: MicroBatcher | None = None
        self.detector: MicroBatcher | None = None
        self.model_path = model_path
        self.index_path = index_path
        self.max_instances = max_instances
        self.max_pixels = max_pixels
        self.on_no_face = on_no_face
        self.return_paths = return_paths
        self.model: IdentifiedModel | None = None
        self.index: GalleryIndex | None = None
        self.dimension = 0

    def __reduce__(self):
        # KServe's --workers N starts each worker process with multiprocessing's spawn, which pickles the
        # registered models; a TensorFlow model does not pickle, so a worker loads its own copy from the files.
        return _model_loading_in_background, (self._arguments,)

    def load(self) -> bool:
        self.model = load_model(self.model_path)
        embedder = self.model.embedder  # the embedding size, for the v2 rows of faceless instances
        self.dimension = int(embedder.forward(np.zeros((1, embedder.image_size, embedder.image_size, 3),
                                                       np.float32)).shape[-1])
        wait_s = self.max_batch_wait_ms / 1000
        self.batcher = MicroBatcher(functools.partial(_forward_rows, embedder.forward), self.max_batch_size, wait_s)
        # Photos of concurrent requests meet in one detector call too (MTCNN batches photos of one size).
        self.detector = None if embedder.align == "none" else MicroBatcher(
            embedder.detect, self.max_batch_size, wait_s, join=_join_lists,
            counters=(DETECTOR_PASSES, DETECTED_PHOTOS), name="detector")
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
    async def _prepare(self, images: list[bytes], field: str) -> Prepared:
        """Decode each photo once, in a worker thread (so the event loop goes on accepting and batching); find
        the faces together with other requests' photos; crop or warp each face into its model input. A bad
        photo is this request's 400 and never reaches a shared queue."""
        embedder, loop = self.model.embedder, asyncio.get_running_loop()
        names = [f"{field}[{i}]" for i in range(len(images))]
        try:
            decoded = await loop.run_in_executor(None, embedder.decode, images, names)
            faces = None if self.detector is None else await self.detector(decoded)
            prepare = functools.partial(embedder.prepare_decoded, decoded, names, faces, self.on_no_face)
            return await loop.run_in_executor(None, prepare)
        except EmbeddingError as e:
            raise InvalidInput(str(e)) from None

    async def _embed(self, prepared: Prepared, flip_tta: bool) -> Embedded:
        if not prepared.kept:
            return prepared.embedded(None)
        return prepared.embedded(await self.batcher.embed(prepared.inputs, flip_tta))

    @contextlib.contextmanager
    def _admitted(self, task: Task) -> Iterator[None]:
        """Count the request's images as queued until it is answered; past --max_queue refuse it now (503)."""
        n = task.count()
        if self.queued + n > self.max_queue:
            OVERLOADED.inc()
            raise overloaded(self.queued, self.max_queue)
        self.queued += n
        try:
            yield
        finally:
            self.queued -= n

    async def predict(self, task: Task, headers: dict[str, str] | None = None) -> dict[str, Any]:
        # async: KServe awaits it in the event loop, where concurrent requests meet in the micro-batcher.
        with self._admitted(task):
            return {"task": task, **await self._results(task)}  # postprocess answers in the request's protocol

    async def _results(self, task: Task) -> dict[str, Any]:
        """Per-instance results; ``errors`` maps an instance's position to the faceless photo that stopped it."""
        embedder = self.model.embedder
        if task.kind == "embed":
            embedded = await self._embed(await self._prepare(task.images["image"], "image"), flip_tta=False)
            return {"embedding": embedded.rows(), "errors": _errors(embedded)}
        if task.kind == "compare":
            # The evaluated threshold holds for embeddings computed as the evaluation computed them.
            flip = embedder.threshold_flip_tta
            prepared_a = await self._prepare(task.images["image_a"], "image_a")
            prepared_b = await self._prepare(task.images["image_b"], "image_b")
            a, b = await asyncio.gather(self._embed(prepared_a, flip), self._embed(prepared_b, flip))
            errors = {**_errors(b), **_errors(a)}  # image_a's problem is named when both have one
            similarity = [None if i in errors else float(np.dot(x, y))
                          for i, (x, y) in enumerate(zip(a.rows(), b.rows(), strict=True))]
            same = None if embedder.threshold is None else [s is not None and s >= embedder.threshold
                                                            for s in similarity]
            return {"similarity": similarity, "same": same, "threshold": embedder.threshold, "errors": errors}
        if self.index is None:
            raise InvalidInput("task 'search' needs a gallery index; start the server with --index IDX "
                               "(built by `arcface enroll`)")
        probes = await self._embed(await self._prepare(task.images["image"], "image"), self.index.flip_tta)
        try:
            found = self.index.search(probes.embeddings, self.model.model_id, task.top_k) if probes.kept else []
        except GalleryError as e:
            raise InvalidInput(str(e)) from None
        matches: list[list[Match] | None] = [None] * len(task.images["image"])
        for position, row in zip(probes.kept, found, strict=True):
            matches[position] = row
        return {"matches": matches, "errors": _errors(probes)}

    def postprocess(self, result: dict[str, Any], headers: dict[str, str] | None = None,
                    response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        """The answer in the request's protocol: a v1 dict of predictions, or a v2 InferResponse."""
        task = result["task"]
        return self._v2_response(task, result) if task.v2_request is not None else self._v1_response(task, result)

    def _match(self, match: Match) -> dict[str, Any]:
        # An enrolled photo's path tells who was photographed where: only a server started to show it does.
        answer = match.to_dict()
        return answer if self.return_paths else {k: v for k, v in answer.items() if k != "path"}

    def _v1_response(self, task: Task, result: dict[str, Any]) -> dict[str, Any]:
        errors = result["errors"]
        if task.kind == "embed":
            answers = [{"embedding": row.tolist()} if row is not None else None for row in result["embedding"]]
        elif task.kind == "compare":
            same = result["same"]
            answers = [{"similarity": s, "same": None if same is None else bool(same[i]),
                        "threshold": result["threshold"]} for i, s in enumerate(result["similarity"])]
        else:
            answers = [{"matches": [self._match(m) for m in matches]} if matches is not None else None
                       for matches in result["matches"]]
        return {"predictions": [{"error": errors[i].to_dict()} if i in errors else answer
                                for i, answer in enumerate(answers)]}

    def _v2_response(self, task: Task, result: dict[str, Any]) -> InferResponse:
        errors = result["errors"]
        if task.kind == "embed":
            zeros = np.zeros(self.dimension, np.float32)  # a faceless instance's row; its 'error' entry says why
            embedding = np.stack([zeros if row is None else row for row in result["embedding"]])
            outputs = [InferOutput("embedding", list(embedding.shape), "FP32", embedding.tolist())]
        else:
            similarity = np.array([0.0 if s is None else s for s in result["similarity"]], np.float32)
            outputs = [InferOutput("similarity", [len(similarity)], "FP32", similarity.tolist())]
            if result["same"] is not None:
                outputs.append(InferOutput("same", [len(similarity)], "BOOL", [bool(s) for s in result["same"]],
                                           parameters={"threshold": result["threshold"]}))
        if errors:
            n = len(next(iter(task.images.values())))
            outputs.append(InferOutput("error", [n], "BYTES", [str(errors[i]) if i in errors else "" for i in range(n)]))
        return InferResponse(task.v2_request.id or "", self.name, outputs)


def _model_loading_in_background(arguments: dict[str, Any]) -> ArcFaceModel:
    """A worker's copy of the model, not ready until it has loaded. KServe's supervisor kills a worker that does
    not answer its ping within 5 s, and the worker answers only once this returns: loading here (TensorFlow's
    import, the model) takes longer than that on a busy CPU, so it loads in a thread instead."""
    model = ArcFaceModel(**arguments)
    threading.Thread(target=model.load, name="arcface-load", daemon=True).start()
    return model


def _errors(embedded: Embedded) -> dict[int, NoFace]:
    return {problem.index: problem for problem in embedded.skipped}


class HostModelServer(kserve.ModelServer):
    """KServe's ModelServer listening on ``host``. KServe 0.21 has no host option: its RESTServer builds the
    uvicorn config with ``host="0.0.0.0"`` inside ``ModelServer.start``. ``start`` creates the server's
    coroutine, then calls :meth:`setup_event_loop` before running it, and uvicorn binds ``config.host`` only
    when the coroutine runs; so the host is set there, on the config KServe built."""

    def __init__(self, host: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.host = host

    def setup_event_loop(self) -> None:
        # --workers N: the parent binds the socket (RESTServerMultiProcess.start) from its RESTServer's config.
        multiprocess = getattr(self, "_rest_multiprocess_server", None)
        rest = getattr(multiprocess, "_rest_server", None) or getattr(self, "_rest_server", None)
        if rest is None or not hasattr(rest, "config"):  # a KServe that builds its server otherwise: refuse, not 0.0.0.0
            raise RuntimeError(f"kserve {importlib.metadata.version('kserve')} does not build its REST server as "
                               "arcface.mlops.serving.HostModelServer expects, so --host cannot be applied; install the "
                               "kserve version the serve extra names")
        rest.config.host = self.host
        super().setup_event_loop()


def serve(model_path: str, name: str = DEFAULT_NAME, http_port: int = 8080, index_path: str | None = None,
          max_instances: int = DEFAULT_MAX_INSTANCES, grpc_port: int | None = None, host: str = DEFAULT_HOST,
          on_no_face: str = "skip", return_paths: bool = False, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          max_batch_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS, max_queue: int = DEFAULT_MAX_QUEUE,
          workers: int = DEFAULT_WORKERS) -> None:
    """Load the model (and index) and answer requests on ``host`` until stopped. The default, 127.0.0.1, serves
    this machine only: the server has no authentication of its own. In a cluster the container is started
    with ``--host 0.0.0.0`` and the ingress in front of it authenticates."""
    if grpc_port is not None and host not in ALL_INTERFACES:
        # KServe 0.21's gRPC server always listens on [::] (every interface); it has no host to set.
        raise ValueError(f"--grpc_port with --host {host}: KServe's gRPC server always listens on every interface; "
                         "leave --grpc_port out, or pass --host 0.0.0.0 where an authenticating ingress is in front")
    model = ArcFaceModel(name, model_path, index_path, max_instances, on_no_face=on_no_face,
                         return_paths=return_paths, max_batch_size=max_batch_size,
                         max_batch_wait_ms=max_batch_wait_ms, max_queue=max_queue)
    model.load()
    server = HostModelServer(host, http_port=http_port, grpc_port=grpc_port or 8081,
                             enable_grpc=grpc_port is not None, workers=workers)
    server.start([model])
