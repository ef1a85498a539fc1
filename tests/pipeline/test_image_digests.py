"""Images by digest: the digests file ``docker/build.sh --push`` writes (arcface.mlops.images) and the compiled pipeline
that names its images ``<repository>/<flavor>@sha256:...`` from it. No Docker needed (the real push, to a real
registry, is tests/docker/test_push.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline
from arcface import __version__
from arcface.mlops import images
from kfp_pipeline import cli as pipeline_cli

REPO = Path(__file__).resolve().parents[2]
DIGEST = {"cpu": "sha256:" + "c" * 64, "validate": "sha256:" + "a" * 64, "gpu": "sha256:" + "9" * 64}
TFJOB = ["--workers", "2", "--gpus-per-worker", "1", "--pvc", "faces"]  # all three images, and the launcher's


@pytest.fixture(autouse=True)
def no_default_digests(tmp_path, monkeypatch):
    """Hermetic: the default digests file is one that does not exist, whatever the checkout holds."""
    monkeypatch.setenv(images.DIGESTS_ENV, str(tmp_path / "absent" / "image-digests.json"))


def write_digests(path: Path, flavors=("cpu", "validate", "gpu"), *, repo: str | None = None,
                  revision: str | None = None) -> Path:
    revision = revision or images.checkout_revision() or "unknown"
    for flavor in flavors:
        images.record_push(path, flavor, DIGEST[flavor], revision, repo=repo)
    return path


def compile_cli(tmp_path, capsys, *flags) -> tuple[int, list[dict], str]:
    out = tmp_path / "p.yaml"
    code = pipeline.main(["compile", "--output", str(out), *flags])
    err = capsys.readouterr().err
    return code, (list(yaml.safe_load_all(out.read_text())) if code == 0 else []), err


def executor_images(spec: dict) -> dict[str, str]:
    return {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def launcher_image(spec: dict) -> str:
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    return tasks["launch-tfjob"]["inputs"]["parameters"]["image"]["runtimeValue"]["constant"]


def ref(flavor: str) -> str:
    return f"{images.repository()}/{flavor}@{DIGEST[flavor]}"


# ---------------------------------------------------------------- the digests file


def test_record_push_writes_and_merges(tmp_path):
    path = tmp_path / "d.json"
    assert images.record_push(path, "cpu", DIGEST["cpu"], "abc") == ref("cpu")
    images.record_push(path, "validate", DIGEST["validate"], "abc")
    data = json.loads(path.read_text())
    assert data["format"] == images.DIGESTS_FORMAT
    assert (data["repository"], data["version"]) == (images.repository(), __version__)
    assert set(data["images"]) == {"cpu", "validate"}  # the second push kept the first one's entry
    assert data["images"]["cpu"] == {**data["images"]["cpu"], "reference": ref("cpu"), "digest": DIGEST["cpu"],
                                     "tag": images.cpu_image(), "revision": "abc"}
    # A push to another repository starts the file anew: digests of two registries never mix.
    images.record_push(path, "validate", DIGEST["validate"], "abc", repo="127.0.0.1:5000/arcface")
    data = json.loads(path.read_text())
    assert data["repository"] == "127.0.0.1:5000/arcface" and set(data["images"]) == {"validate"}


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "a" * 64, "sha256:" + "A" * 64, ""])
def test_a_malformed_digest_is_refused(tmp_path, digest):
    with pytest.raises(ValueError, match="not an image digest"):
        images.record_push(tmp_path / "d.json", "cpu", digest)
    assert not (tmp_path / "d.json").exists()


def test_record_command_is_what_build_sh_calls(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), images.REPOSITORY_ENV: "127.0.0.1:5000/arcface"}
    out = subprocess.run([sys.executable, "-m", "arcface", "images", "record", "--file", str(tmp_path / "d.json"),
                          "--flavor", "validate", "--digest", DIGEST["validate"], "--revision", "abc"],
                         env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == f"127.0.0.1:5000/arcface/validate@{DIGEST['validate']}"
    pins = images.read_pins(tmp_path / "d.json", repo="127.0.0.1:5000/arcface")
    assert pins.reference("validate") == out.strip() and pins.reference("cpu") is None


def test_a_file_that_is_not_a_digests_file_is_refused(tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps({"cpu": DIGEST["cpu"]}))
    with pytest.raises(ValueError, match="is not an image digests file"):
        images.read_pins(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        images.load_pins(bad)
    with pytest.raises(ValueError, match="does not exist; `docker/build.sh --push` writes it"):
        images.load_pins(tmp_path / "missing.json")


def test_default_file_is_in_the_checkout_or_the_environment(monkeypatch):
    monkeypatch.delenv(images.DIGESTS_ENV)
    assert images.default_digests_file() == REPO / "build" / "image-digests.json"
    monkeypatch.setenv(images.DIGESTS_ENV, "/elsewhere/d.json")
    assert images.default_digests_file() == Path("/elsewhere/d.json")


# ---------------------------------------------------------------- the compiled pipeline


def test_compiled_pipeline_names_every_image_by_digest(tmp_path, capsys):
    digests = write_digests(tmp_path / "d.json")
    code, (spec, _), err = compile_cli(tmp_path, capsys, "--image-digests", str(digests), *TFJOB)
    assert code == 0, err
    got = executor_images(spec)
    assert got.pop("exec-launch-tfjob") == ref("cpu")
    for name, image in got.items():
        assert image == (ref("cpu") if name in ("exec-align-faces", "exec-evaluate-model", "exec-export-model")
                         else ref("validate")), name
    assert launcher_image(spec) == ref("gpu")  # the TFJob's workers pull by digest too
    for flavor in ("cpu", "validate", "gpu"):
        assert f"image {flavor}: {ref(flavor)} (digest from {digests}, pushed " in err, err
    assert "WARNING" not in err  # pushed from this checkout's revision


def test_pinning_changes_nothing_but_the_image_references(tmp_path, capsys):
    assert compile_cli(tmp_path, capsys, "--no-image-digests", *TFJOB)[0] == 0
    tags_yaml = (tmp_path / "p.yaml").read_text()
    code, _, _ = compile_cli(tmp_path, capsys, "--image-digests", str(write_digests(tmp_path / "d.json")), *TFJOB)
    assert code == 0
    pinned_yaml = (tmp_path / "p.yaml").read_text()
    for flavor in DIGEST:
        assert images.image(flavor) not in pinned_yaml
        pinned_yaml = pinned_yaml.replace(ref(flavor), images.image(flavor))
    assert pinned_yaml == tags_yaml


def test_without_digests_the_tags_stay_and_it_says_why(tmp_path, capsys):
    code, (spec,), err = compile_cli(tmp_path, capsys)
    assert code == 0
    assert set(executor_images(spec).values()) == {images.cpu_image(), images.validate_image()}
    absent = tmp_path / "absent" / "image-digests.json"
    for flavor in ("cpu", "validate"):
        assert (f"image {flavor}: {images.image(flavor)} (tag, which a later push can move: no digests file at "
                f"{absent}; `docker/build.sh --push` writes it)") in err, err
    assert "image gpu" not in err  # only the images this pipeline uses


def test_the_default_digests_file_is_read_when_it_matches(tmp_path, capsys, monkeypatch):
    digests = write_digests(tmp_path / "default.json", ("cpu", "validate"))
    monkeypatch.setenv(images.DIGESTS_ENV, str(digests))
    code, (spec,), err = compile_cli(tmp_path, capsys)
    assert code == 0 and set(executor_images(spec).values()) == {ref("cpu"), ref("validate")}
    assert f"(digest from {digests}, pushed" in err
    # --no-image-digests keeps the tags even so, and says so
    code, (spec,), err = compile_cli(tmp_path, capsys, "--no-image-digests")
    assert set(executor_images(spec).values()) == {images.cpu_image(), images.validate_image()}
    assert f"image cpu: {images.cpu_image()} (tag, which a later push can move: --no-image-digests)" in err


@pytest.mark.parametrize(("other", "what"), [("version", "9.9.9"), ("repository", "127.0.0.1:5000/elsewhere")])
def test_a_digests_file_for_another_version_or_repository(tmp_path, capsys, monkeypatch, other, what):
    digests = write_digests(tmp_path / "d.json", ("cpu", "validate"))
    data = json.loads(digests.read_text())
    data[other] = what
    digests.write_text(json.dumps(data))
    mine = f"{images.repository()} version {__version__}"
    # Given explicitly: refused, naming both and the fix.
    code, _, err = compile_cli(tmp_path, capsys, "--image-digests", str(digests))
    assert code == 2
    assert f"image digests file {digests} is for {data['repository']} version {data['version']}" in err
    assert f"but this pipeline's images are {mine}" in err and "docker/build.sh --push" in err
    # Found as the default file: ignored (the tags are used), saying why.
    monkeypatch.setenv(images.DIGESTS_ENV, str(digests))
    code, (spec,), err = compile_cli(tmp_path, capsys)
    assert code == 0 and set(executor_images(spec).values()) == {images.cpu_image(), images.validate_image()}
    assert f"is for {data['repository']} version {data['version']}" in err and "(ignored)" in err


def test_a_flavor_without_a_digest_keeps_its_tag_and_says_how_to_push_it(tmp_path, capsys):
    digests = write_digests(tmp_path / "d.json", ("validate",))
    code, (spec,), err = compile_cli(tmp_path, capsys, "--image-digests", str(digests))
    assert code == 0
    assert executor_images(spec)["exec-validate-data"] == ref("validate")
    assert executor_images(spec)["exec-train-model"] == images.cpu_image()
    assert f"{digests} has no digest for cpu; push it: ARCFACE_IMAGE_REPOSITORY={images.repository()} " \
           "docker/build.sh --push --flavors cpu" in err


def test_a_digest_pushed_from_another_revision_is_used_with_a_warning(tmp_path, capsys):
    if images.checkout_revision() is None:
        pytest.skip("not a git checkout: no revision to compare with")
    digests = write_digests(tmp_path / "d.json", ("cpu", "validate"), revision="0" * 40 + "-dirty")
    code, (spec,), err = compile_cli(tmp_path, capsys, "--image-digests", str(digests))
    assert code == 0 and executor_images(spec)["exec-train-model"] == ref("cpu")
    assert "from revision 000000000000-dirty; WARNING: this checkout is at" in err


def test_submit_and_schedule_take_the_digests(tmp_path):
    digests = write_digests(tmp_path / "d.json", ("cpu",))
    for command in (["submit", "--host", "http://kfp"], ["schedule", "--host", "http://kfp", "--every", "7d"]):
        options = pipeline_cli.deploy_options(pipeline_cli.build_parser().parse_args([*command, "--image-digests",
                                                                              str(digests)]))
        assert options.images.reference("cpu") == ref("cpu") and options.images.reference("validate") is None
    with pytest.raises(SystemExit):  # one or the other
        pipeline_cli.build_parser().parse_args(["compile", "--image-digests", str(digests), "--no-image-digests"])


def test_a_registry_repository_end_to_end(tmp_path):
    """As a user runs it after a push: ARCFACE_IMAGE_REPOSITORY set, the digests file build.sh wrote."""
    repo = "127.0.0.1:5000/arcface"
    digests = write_digests(tmp_path / "d.json", ("cpu", "validate"), repo=repo)
    env = {**os.environ, images.REPOSITORY_ENV: repo, images.DIGESTS_ENV: str(digests)}
    proc = subprocess.run([sys.executable, "pipeline.py", "compile", "--output", str(tmp_path / "p.yaml")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    assert set(executor_images(spec).values()) == {f"{repo}/cpu@{DIGEST['cpu']}", f"{repo}/validate@{DIGEST['validate']}"}
    assert f"image validate: {repo}/validate@{DIGEST['validate']} (digest from {digests}" in proc.stderr
