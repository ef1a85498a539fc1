"""The one place the container image names and tags are defined, and the digests that pin them.

Every tag is ``<repository>/<flavor>:<arcface.__version__>`` (never ``:latest``), so a pipeline compiled
from a given release always names the images built from that same release. The repository defaults to
``arcface-kfp`` and is overridden by the environment variable ``ARCFACE_IMAGE_REPOSITORY`` (for example
``127.0.0.1:5000/arcface`` when the images are pushed to a registry a cluster can pull from). The
debootstrap base image is local only (never pushed) and keeps the default repository, so a build for
another repository reuses the same base and the same layer cache.

A tag can be moved: ``docker/build.sh --push`` therefore records the digest of each image it pushed in a
*digests file* (JSON, :func:`record_push`; default ``build/image-digests.json`` in the checkout, or
``$ARCFACE_IMAGE_DIGESTS``), and ``pipeline.py compile`` names the images by digest,
``<repository>/<flavor>@sha256:...`` (:func:`digest_reference`), when that file is for this version and
repository (:func:`load_pins`, :class:`ImagePins`). Such a reference always pulls exactly the pushed image.

``python -m arcface images`` prints the tags as shell-quoted ``NAME=value`` lines, which is how
``docker/build.sh`` reads them; ``python -m arcface images record ...`` adds a pushed image to a digests
file. This module imports nothing beyond the standard library and ``arcface.__version__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from arcface import __version__

DEFAULT_REPOSITORY = "arcface-kfp"
REPOSITORY_ENV = "ARCFACE_IMAGE_REPOSITORY"
#: Overrides where the digests file is written (``build.sh --push``) and read (``pipeline.py compile``).
DIGESTS_ENV = "ARCFACE_IMAGE_DIGESTS"
#: The default digests file, relative to the checkout.
DIGESTS_FILE_IN_CHECKOUT = "build/image-digests.json"
DIGESTS_FORMAT = "arcface-image-digests/1"

#: flavor -> what the image holds
FLAVORS: dict[str, str] = {
    "cpu": "every component: TensorFlow (CPU), kfp, ONNX export (tf2onnx/onnx/onnxruntime); `arcface serve` (kserve, faiss)",
    "gpu": "training on a GPU: the CPU image's packages on a TensorFlow GPU base image",
    "validate": "data validation only: numpy, pillow, pyyaml (no TensorFlow)",
}

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def repository() -> str:
    """Image repository prefix, without a trailing slash."""
    repo = os.environ.get(REPOSITORY_ENV, "").strip() or DEFAULT_REPOSITORY
    return repo.rstrip("/")


def _tag(flavor: str, suffix: str = "", repo: str | None = None) -> str:
    return f"{repo or repository()}/{flavor}:{__version__}{suffix}"


def cpu_image() -> str:
    """CPU component image, e.g. ``arcface-kfp/cpu:0.1.0``."""
    return _tag("cpu")


def gpu_image() -> str:
    """GPU training image, e.g. ``arcface-kfp/gpu:0.1.0``."""
    return _tag("gpu")


def validate_image() -> str:
    """Validation-only image without TensorFlow, e.g. ``arcface-kfp/validate:0.1.0``."""
    return _tag("validate")


def base_image() -> str:
    """Local debootstrap base image the others are built on, ``arcface-kfp/base:0.1.0-bookworm``.

    Never pushed, so it ignores ``ARCFACE_IMAGE_REPOSITORY``: building for another repository reuses it (and
    with it the layer cache) instead of importing it again under a new name."""
    return _tag("base", "-bookworm", DEFAULT_REPOSITORY)


def image(flavor: str) -> str:
    """The tag of a pushed flavor (cpu, gpu, validate)."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown image flavor {flavor!r}; known: {', '.join(FLAVORS)}")
    return _tag(flavor)


def digest_reference(flavor: str, digest: str, repo: str | None = None) -> str:
    """The immutable reference of a pushed image, ``<repository>/<flavor>@sha256:<64 hex>``."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown image flavor {flavor!r}; known: {', '.join(FLAVORS)}")
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not an image digest (sha256:<64 hex digits>)")
    return f"{repo or repository()}/{flavor}@{digest}"


def all_images() -> dict[str, str]:
    """Every tag this module defines, by name."""
    return {
        "cpu": cpu_image(),
        "gpu": gpu_image(),
        "validate": validate_image(),
        "base": base_image(),
    }


# ---------------------------------------------------------------------------------------------------------
# Digests of pushed images
# ---------------------------------------------------------------------------------------------------------
def checkout_root() -> Path | None:
    """The checkout this module was imported from (``src/arcface/mlops/images.py`` under it), or None (installed)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "arcface").is_dir() else None


def default_digests_file() -> Path | None:
    """``$ARCFACE_IMAGE_DIGESTS``, else ``build/image-digests.json`` in the checkout (None outside a checkout)."""
    env = os.environ.get(DIGESTS_ENV, "").strip()
    if env:
        return Path(env)
    root = checkout_root()
    return root / DIGESTS_FILE_IN_CHECKOUT if root else None


def checkout_revision() -> str | None:
    """``git rev-parse HEAD`` of the checkout, or None where that cannot be told."""
    root = checkout_root()
    if root is None:
        return None
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


class DigestsMismatch(ValueError):
    """A well-formed digests file for another version or repository."""


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"image digests file {path} does not exist; `docker/build.sh --push` writes it "
                         f"(default {DIGESTS_FILE_IN_CHECKOUT} in the checkout, or --digests-file PATH)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"image digests file {path} cannot be read ({e}); push again to rewrite it: "
                         "docker/build.sh --push") from None
    if not isinstance(data, dict) or data.get("format") != DIGESTS_FORMAT or not isinstance(data.get("images"), dict):
        raise ValueError(f"{path} is not an image digests file (format {DIGESTS_FORMAT}, written by "
                         "docker/build.sh --push)")
    for flavor, entry in data["images"].items():
        if flavor not in FLAVORS or not isinstance(entry, dict) or not _DIGEST.fullmatch(str(entry.get("digest"))):
            raise ValueError(f"{path}: bad entry for image {flavor!r} (expected a flavor of {', '.join(FLAVORS)} "
                             "with a digest sha256:<64 hex>); push again to rewrite it: docker/build.sh --push")
    return data


@dataclasses.dataclass(frozen=True)
class ImagePins:
    """Which reference a compiled pipeline gives each image flavor, and why.

    ``references`` holds ``(flavor, repository/flavor@sha256:...)`` for the flavors with a recorded digest;
    every other flavor keeps its tag, for the reason in ``why_tags``. Build one with :func:`load_pins`.
    """

    repository: str
    version: str
    source: str = ""
    references: tuple[tuple[str, str], ...] = ()
    details: tuple[tuple[str, str], ...] = ()  # flavor -> "pushed <when> from revision <r>[; warning]"
    why_tags: str = "no image digests given"

    def reference(self, flavor: str) -> str | None:
        return dict(self.references).get(flavor)

    def describe(self, flavor: str, tag: str) -> str:
        """One line: the reference the pipeline uses for ``flavor`` (whose tag is ``tag``) and why."""
        ref = self.reference(flavor)
        if ref is not None:
            return f"{flavor}: {ref} (digest from {self.source}, {dict(self.details)[flavor]})"
        why = self.why_tags
        if self.source:  # a digests file was used, without this flavor
            why = (f"{self.source} has no digest for {flavor}; push it: ARCFACE_IMAGE_REPOSITORY={self.repository} "
                   f"docker/build.sh --push --flavors {flavor}")
        return f"{flavor}: {tag} (tag, which a later push can move: {why})"


def read_pins(path: str | Path, *, repo: str | None = None, version: str = __version__) -> ImagePins:
    """The pins of a digests file that must be for ``repo`` (default :func:`repository`) and ``version``.

    A file for another version or repository raises :class:`DigestsMismatch`; an unreadable one ValueError."""
    path = Path(path)
    repo = (repo or repository()).rstrip("/")
    data = _read(path)
    if data.get("version") != version or data.get("repository") != repo:
        raise DigestsMismatch(
            f"image digests file {path} is for {data.get('repository')} version {data.get('version')}, but this "
            f"pipeline's images are {repo} version {version}: push this version there "
            f"(ARCFACE_IMAGE_REPOSITORY={repo} docker/build.sh --push), or compile with "
            f"ARCFACE_IMAGE_REPOSITORY={data.get('repository')} if that is the registry you meant")
    head = checkout_revision()
    references, details = [], []
    for flavor in FLAVORS:
        entry = data["images"].get(flavor)
        if entry is None:
            continue
        references.append((flavor, digest_reference(flavor, entry["digest"], repo)))
        revision = str(entry.get("revision") or "unknown")
        short = revision[:12] + ("-dirty" if revision.endswith("-dirty") else "")  # build.sh: uncommitted changes
        detail = f"pushed {entry.get('pushed_at', 'at an unknown time')} from revision {short}"
        if head and revision != head:
            detail += (f"; WARNING: this checkout is at {head[:12]}, so the image may not hold its code; if it "
                       f"changed, rebuild and push: ARCFACE_IMAGE_REPOSITORY={repo} docker/build.sh --push "
                       f"--flavors {flavor}")
        details.append((flavor, detail))
    return ImagePins(repository=repo, version=version, source=str(path), references=tuple(references),
                     details=tuple(details))


def load_pins(path: str | Path | None = None, *, use_digests: bool = True, repo: str | None = None) -> ImagePins:
    """The pins for ``pipeline.py compile``: from ``path`` when given (a mismatch is an error), else from the
    default digests file when it exists and is for this version and repository (else tags, saying why)."""
    repo = (repo or repository()).rstrip("/")
    if not use_digests:
        return ImagePins(repo, __version__, why_tags="--no-image-digests")
    if path is not None:
        return read_pins(path, repo=repo)
    default = default_digests_file()
    if default is None:
        return ImagePins(repo, __version__, why_tags=f"no digests file (not in a checkout; give --image-digests FILE "
                                                     f"or set {DIGESTS_ENV})")
    if not default.is_file():
        return ImagePins(repo, __version__, why_tags=f"no digests file at {default}; `docker/build.sh --push` "
                                                     "writes it")
    try:
        return read_pins(default, repo=repo)
    except DigestsMismatch as e:
        return ImagePins(repo, __version__, why_tags=f"{e} (ignored)")


def record_push(path: str | Path, flavor: str, digest: str, revision: str = "unknown", *,
                repo: str | None = None, version: str = __version__) -> str:
    """Add a pushed image to the digests file at ``path`` and return its digest reference.

    Entries of other flavors are kept when the file is for the same repository and version; a file for another
    one is replaced."""
    path = Path(path)
    repo = (repo or repository()).rstrip("/")
    reference = digest_reference(flavor, digest, repo)
    data = None
    if path.is_file():
        try:
            data = _read(path)
        except ValueError:
            data = None
    if data is None or data.get("repository") != repo or data.get("version") != version:
        data = {"format": DIGESTS_FORMAT, "repository": repo, "version": version, "images": {}}
    data["images"][flavor] = {
        "reference": reference,
        "tag": _tag(flavor, repo=repo),
        "digest": digest,
        "revision": revision,
        "pushed_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    data["images"] = dict(sorted(data["images"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return reference


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["record"]:
        p = argparse.ArgumentParser(prog="arcface images record",
                                    description="add a pushed image's digest to a digests file; prints its reference")
        p.add_argument("--file", required=True)
        p.add_argument("--flavor", required=True, choices=sorted(FLAVORS))
        p.add_argument("--digest", required=True, help="sha256:<64 hex>, as docker push reported it")
        p.add_argument("--revision", default="unknown", help="git revision the image was built from")
        args = p.parse_args(argv[1:])
        try:
            print(record_push(args.file, args.flavor, args.digest, args.revision))
        except ValueError as e:
            sys.exit(f"arcface images record: {e}")
        return
    if argv:
        sys.exit("usage: arcface images [record --file F --flavor F --digest sha256:... --revision R]")
    default = default_digests_file()
    values = {"VERSION": __version__, "REPOSITORY": repository(), "DEFAULT_REPOSITORY": DEFAULT_REPOSITORY,
              **{f"{name.upper()}_IMAGE": tag for name, tag in all_images().items()},
              "DIGESTS_FILE": str(default) if default else ""}
    for name, value in values.items():
        print(f"{name}={shlex.quote(value)}")

