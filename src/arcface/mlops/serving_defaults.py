"""``arcface serve``'s settings and their defaults, in one place: the command's flags, the server and the
InferenceService manifest (``pipeline.py serve-manifest``) all read them here. Standard library only, so the
command builds its parser without loading kserve."""

DEFAULT_NAME = "arcface"
DEFAULT_HTTP_PORT = 8080
#: The server has no authentication of its own: this machine only, unless --host says otherwise.
DEFAULT_HOST = "127.0.0.1"
ALL_INTERFACES = ("0.0.0.0", "::")
DEFAULT_MAX_INSTANCES = 64
# Measured on 2 busy CPU cores (the InferenceService's limit), ResNet50 at 112 px: 216 ms for one image, ~150 ms
# per image from a pass of 8 on (8: 1.2 s, 32: 5.6 s, 64: 8 s per pass); the tiny test model: 2.1 ms for one,
# 0.25 ms per image at 16, 0.24 at 32. Past 16 a pass gains little per image while every caller in it waits for
# all of it. A 10 ms wait is under 5% of a lone ResNet50 image's pass, so an idle server barely notices it.
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_WAIT_MS = 10.0
# Images admitted and not yet answered: 128 is about 19 s of ResNet50 work on those 2 cores, under the 30-60 s
# callers usually wait; past it a caller is better told to retry (or sent to another replica) than kept waiting.
DEFAULT_MAX_QUEUE = 128
RETRY_AFTER_S = 1
# Server processes (KServe's --workers), each with its own copy of the model and its own batches. Measured on 2
# cores (benchmarks/results/serve_server_cpu.json, the first command's network): one process spends the cores on
# its requests' JSON, base64 and decoding and forms batches of 2-4 at 16 clients (18 requests/s with alignment,
# 26 without); two reach 33 and 68-71 requests/s, 92 % and 140 % of the bare embedder's best batched rate.
DEFAULT_WORKERS = 2
