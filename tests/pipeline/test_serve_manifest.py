"""`pipeline.py serve-manifest`: a KServe InferenceService for a model version, with a golden file.

Regenerate the golden file after an intended change with:

    python pipeline.py serve-manifest --model-uri s3://models/arcface/3 --version 3 \\
        --output tests/pipeline/golden/serve_manifest.yaml
"""

from __future__ import annotations

from pathlib import Path

import kserve  # the [test] extra installs it: a missing or broken kserve fails here, it does not skip
import pytest
import yaml

import pipeline
from arcface.cli import build_parser
from arcface.mlops import images

GOLDEN = Path(__file__).parent / "golden" / "serve_manifest.yaml"
URI = "s3://models/arcface/3"


@pytest.fixture(autouse=True)
def no_default_digests(tmp_path, monkeypatch):
    """Hermetic: the default digests file is one that does not exist, whatever the checkout holds."""
    monkeypatch.delenv(images.REPOSITORY_ENV, raising=False)
    monkeypatch.setenv(images.DIGESTS_ENV, str(tmp_path / "absent" / "image-digests.json"))


@pytest.fixture
def manifest(tmp_path) -> Path:
    out = tmp_path / "isvc.yaml"
    assert pipeline.main(["serve-manifest", "--model-uri", URI, "--version", "3", "--output", str(out)]) == 0
    return out


def test_golden_file(manifest):
    assert manifest.read_text() == GOLDEN.read_text(), (
        "the InferenceService differs from tests/pipeline/golden/serve_manifest.yaml; if the change is intended, "
        "regenerate it (see this module's docstring)")


def test_manifest_is_a_kserve_inference_service_running_arcface_serve(manifest, monkeypatch):
    from kubernetes import client

    document = yaml.safe_load(manifest.read_text())
    # Read back into KServe's own classes: a field they do not know would not survive the round trip. Their
    # deserializer looks every class up in kserve.models, which lacks the Kubernetes ones they embed.
    for name in dir(client.models):
        if name.startswith("V1") and not hasattr(kserve.models, name):
            monkeypatch.setattr(kserve.models, name, getattr(client.models, name), raising=False)
    service = kserve.ApiClient()._ApiClient__deserialize(document, "V1beta1InferenceService")
    assert kserve.ApiClient().sanitize_for_serialization(service) == document
    assert (service.api_version, service.kind) == ("serving.kserve.io/v1beta1", "InferenceService")
    (container,) = service.spec.predictor.containers
    assert container.image == images.cpu_image()
    assert {e.name: e.value for e in container.env} == {"STORAGE_URI": URI}
    assert container.resources.requests and container.resources.limits
    assert service.metadata.labels["arcface-kfp/model-version"] == "3"
    # The command is one our CLI accepts, loading what KServe's storage initializer put at /mnt/models.
    assert container.command == ["arcface", "serve"]
    args = build_parser().parse_args([container.command[1], *container.args])
    assert (args.model, args.name, args.http_port) == ("/mnt/models", "arcface", 8080)
    assert container.ports[0].container_port == args.http_port


def test_the_image_is_named_by_digest_after_a_push(tmp_path, capsys):
    digests = tmp_path / "digests.json"
    digest = "sha256:" + "c" * 64
    images.record_push(digests, "cpu", digest, images.checkout_revision() or "unknown")
    out = tmp_path / "isvc.yaml"
    assert pipeline.main(["serve-manifest", "--model-uri", URI, "--image-digests", str(digests),
                          "--output", str(out)]) == 0
    (container,) = yaml.safe_load(out.read_text())["spec"]["predictor"]["containers"]
    assert container["image"] == f"{images.repository()}/cpu@{digest}"
    assert f"cpu@{digest}" in capsys.readouterr().err
    assert pipeline.main(["serve-manifest", "--model-uri", URI, "--no-image-digests", "--output", str(out)]) == 0
    (container,) = yaml.safe_load(out.read_text())["spec"]["predictor"]["containers"]
    assert container["image"] == images.cpu_image()
    assert "(tag, which a later push can move: --no-image-digests)" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--model-uri", "models/arcface/3"], "is not a storage URI"),
    (["--model-uri", URI, "--name", "ArcFace_1"], "is not a valid InferenceService name"),
])
def test_bad_arguments_are_refused_with_the_fix(flags, message, tmp_path, capsys):
    out = tmp_path / "isvc.yaml"
    assert pipeline.main(["serve-manifest", *flags, "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
