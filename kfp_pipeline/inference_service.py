"""A KServe ``InferenceService`` that runs ``arcface serve`` in our CPU image on a stored model version.

Built from the ``kserve`` package's own model classes (``V1beta1InferenceService`` and the Kubernetes
``V1Container`` it holds), so a field KServe does not know cannot be written. KServe's storage initializer
copies ``storageUri`` (given to a custom container as the ``STORAGE_URI`` variable) to ``/mnt/models`` before
the container starts; ``arcface serve --model /mnt/models`` loads it (an export folder or a model-store
version folder).
"""

from __future__ import annotations

import os
import re
from typing import Any

from arcface import __version__, atomic
from arcface.mlops import images, serving_defaults

MODEL_MOUNT = "/mnt/models"       # where KServe's storage initializer puts storageUri
HTTP_PORT = 8080
DEFAULT_NAME = "arcface"
RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
# An InferenceService name is a DNS-1035 label; KServe prefixes it to routes, so keep it short.
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?")
_URI = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


class ManifestError(ValueError):
    """The manifest cannot be written as asked; the message says what to change."""


def _kserve():
    try:
        import kserve
        from kubernetes import client
    except ImportError:
        raise ManifestError("the kserve package is not installed; install the serve extra: "
                            "pip install 'arcface-kfp[serve]'") from None
    return kserve, client


def inference_service(model_uri: str, name: str = DEFAULT_NAME, version: str | None = None,
                      image: str | None = None) -> dict[str, Any]:
    """The InferenceService as a plain dict, ready for ``kubectl apply``; ``image`` defaults to the CPU image's tag
    (``pipeline.py serve-manifest`` passes its digest reference when ``docker/build.sh --push`` recorded one)."""
    if not _NAME.fullmatch(name):
        raise ManifestError(f"--name {name!r} is not a valid InferenceService name; use lowercase letters, digits "
                            "and '-', starting with a letter, at most 45 characters")
    if not _URI.fullmatch(model_uri):
        raise ManifestError(f"--model-uri {model_uri!r} is not a storage URI; pass e.g. s3://bucket/models/arcface/3 "
                            "or pvc://claim/models/arcface/3 (the export or model-store version folder)")
    kserve, k8s = _kserve()
    labels = {"app.kubernetes.io/name": "arcface", "app.kubernetes.io/version": __version__}
    if version is not None:
        labels["arcface-kfp/model-version"] = str(version)
    container = k8s.V1Container(
        name="kserve-container",
        image=image or images.cpu_image(),
        command=["arcface", "serve"],
        # Every interface: the pod is reached through the cluster's ingress, which authenticates the caller
        # (`arcface serve` has no authentication of its own, so it listens on 127.0.0.1 unless told).
        args=["--model", MODEL_MOUNT, "--name", name, "--http_port", str(HTTP_PORT), "--host", "0.0.0.0",
              *serving_args()],
        env=[k8s.V1EnvVar(name="STORAGE_URI", value=model_uri)],
        ports=[k8s.V1ContainerPort(container_port=HTTP_PORT, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(requests=RESOURCES["requests"], limits=RESOURCES["limits"]))
    service = kserve.V1beta1InferenceService(
        api_version=kserve.constants.KSERVE_V1BETA1,
        kind=kserve.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=kserve.V1beta1PredictorSpec(containers=[container])))
    return kserve.ApiClient().sanitize_for_serialization(service)


def serving_args() -> list[str]:
    """The server's own defaults, written out so that the deployed batching, overload limit and process count
    show in the manifest. The server batches concurrent requests itself; KServe's spec.predictor.batcher is not
    set, since it merges several requests' v1 instances into one and a bad photo in one would fail them all
    (arcface.mlops.serving says more)."""
    return ["--max_batch_size", str(serving_defaults.DEFAULT_MAX_BATCH_SIZE),
            "--max_batch_wait_ms", f"{serving_defaults.DEFAULT_MAX_BATCH_WAIT_MS:g}",
            "--max_queue", str(serving_defaults.DEFAULT_MAX_QUEUE),
            "--workers", str(serving_defaults.DEFAULT_WORKERS)]


def write_manifest(output: str, model_uri: str, name: str = DEFAULT_NAME, version: str | None = None,
                   image: str | None = None) -> str:
    import yaml

    document = inference_service(model_uri, name, version, image)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    atomic.write_text(output, yaml.safe_dump(document, sort_keys=False))
    return output
