#!/usr/bin/env bash
# The one entry point for the arcface-kfp container images.
#
#   docker/build.sh                          # base (cached) + wheels (cached, downloaded once) + cpu, validate
#   docker/build.sh --download-only          # only fetch the wheels (needs PyPI); prints the wheel dir
#   docker/build.sh --offline-wheels DIR     # build with the wheels in DIR, no network at all
#   docker/build.sh --flavors cpu            # a subset: any of cpu,validate,gpu
#   docker/build.sh --flavors gpu --gpu-base tensorflow/tensorflow:2.21.0-gpu   # base must be in the engine
#   ARCFACE_IMAGE_REPOSITORY=127.0.0.1:5000/arcface docker/build.sh --push   # build, push, record the digests
#
# Options:
#   --flavors LIST        comma-separated cpu,validate,gpu (default cpu,validate; gpu is built only
#                         when its base image is already in the engine, or skipped with a note)
#   --offline-wheels DIR  use the wheels in DIR as they are (pip --no-index everywhere, also for
#                         building the arcface-kfp wheel, so DIR needs setuptools and wheel too)
#   --wheel-dir DIR       where --download-only / a default build keeps the wheels
#                         (default $ARCFACE_DOCKER_CACHE/wheels/<hash of the requirements>)
#   --download-only       fetch the wheels into the wheel dir, print its path, exit
#   --base-image IMAGE    base for cpu/validate instead of the debootstrap one (Debian-like, python3 + venv)
#   --gpu-base IMAGE      base for gpu (default tensorflow/tensorflow:2.21.0-gpu)
#   --push                after building, push each image to ARCFACE_IMAGE_REPOSITORY (which must be set: the
#                         default repository arcface-kfp names no registry) and record its digest in the
#                         digests file, which `pipeline.py compile` reads to name the images by digest
#   --digests-file FILE   where --push records the digests (default: $ARCFACE_IMAGE_DIGESTS, else
#                         build/image-digests.json in the checkout). Entries of other flavors are kept when the
#                         file is for the same repository and version; otherwise the file is started anew
#
# Tags come from arcface.mlops.images (python -m arcface images), i.e. <repository>/<flavor>:<version>;
# ARCFACE_IMAGE_REPOSITORY changes the repository. Needs a running engine at DOCKER_HOST (see
# docker/engine.sh). Caches live under $ARCFACE_DOCKER_CACHE (default /var/cache/arcface-docker for
# root, ${XDG_CACHE_HOME:-~/.cache}/arcface-docker otherwise).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $(id -u) -eq 0 ]]; then
  _default_cache=/var/cache/arcface-docker
else
  _default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/arcface-docker
fi
CACHE=${ARCFACE_DOCKER_CACHE:-$_default_cache}
export ARCFACE_DOCKER_CACHE=$CACHE
PYTHON=${PYTHON:-python3}

# Top-level pins of the images. Everything below them is pinned by the wheel set itself
# (requirements/constraints.txt = name==version of every wheel downloaded).
PINS=(
  "tensorflow-cpu==2.21.0"
  "kfp==2.17.3"
  "kfp-kubernetes==2.17.3"
  "tf2onnx==1.17.0"
  "onnx==1.23.2"
  "onnxruntime==1.32.0"
)
# The extra of the arcface-kfp wheel the cpu and gpu images also hold: `arcface serve` runs in the cpu image.
IMAGE_EXTRA=serve
# Needed on the host to build the arcface-kfp wheel offline (pyproject build-system).
BUILD_REQS=("setuptools>=68" "wheel")
# What the validation image holds besides the arcface-kfp wheel (installed --no-deps there).
VALIDATE_REQS=(numpy pillow pyyaml kfp)

flavors=cpu,validate
offline_wheels=
wheel_dir=
download_only=0
base_override=
gpu_base=tensorflow/tensorflow:2.21.0-gpu
push=0
digests_file=
while [[ $# -gt 0 ]]; do
  case $1 in
    --flavors) flavors=$2; shift 2 ;;
    --offline-wheels) offline_wheels=$2; shift 2 ;;
    --wheel-dir) wheel_dir=$2; shift 2 ;;
    --download-only) download_only=1; shift ;;
    --base-image) base_override=$2; shift 2 ;;
    --gpu-base) gpu_base=$2; shift 2 ;;
    --push) push=1; shift ;;
    --digests-file) digests_file=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "build.sh: $*" >&2; }
# pip prints one warning per configured-but-absent local index; keep the log readable.
quiet_pip() { "$PYTHON" -m pip "$@" 2> >(grep -v -e 'is ignored: it is neither' -e 'Running pip as the' >&2); }

# ---- tags and version, from the one place they are defined ----
# VERSION, REPOSITORY, DEFAULT_REPOSITORY, CPU_IMAGE, GPU_IMAGE, VALIDATE_IMAGE, BASE_IMAGE, DIGESTS_FILE
eval "$(PYTHONPATH=$REPO/src "$PYTHON" -m arcface images)"
if [[ $push == 1 ]]; then
  if [[ $download_only == 1 ]]; then log "--push builds and pushes the images; it does not go with --download-only"; exit 2; fi
  if [[ $REPOSITORY == "$DEFAULT_REPOSITORY" ]]; then
    log "--push: ARCFACE_IMAGE_REPOSITORY is not set, so the images are named $DEFAULT_REPOSITORY/<flavor>:$VERSION, which"
    log "names no registry. Set it to the repository to push to, e.g."
    log "  ARCFACE_IMAGE_REPOSITORY=127.0.0.1:5000/arcface docker/build.sh --push"
    exit 2
  fi
  digests_file=${digests_file:-$DIGESTS_FILE}
  if [[ -z $digests_file ]]; then log "--push: no default digests file outside a checkout; give --digests-file PATH"; exit 2; fi
fi
SOURCE_URL=$(git -C "$REPO" remote get-url origin 2>/dev/null || true)
if [[ -z $SOURCE_URL ]]; then   # else pyproject's [project.urls] Source / Repository / Homepage
  SOURCE_URL=$("$PYTHON" -c '
import sys, tomllib
urls = tomllib.load(open(sys.argv[1], "rb")).get("project", {}).get("urls", {})
print(next((urls[k] for k in ("Source", "Repository", "Homepage") if k in urls), ""))' "$REPO/pyproject.toml" 2>/dev/null || true)
fi
SOURCE_URL=${ARCFACE_SOURCE_URL:-${SOURCE_URL:-unknown}}
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
# What the digests file records: the revision, marked -dirty when what the images are built from has uncommitted
# changes (then `pipeline.py compile` warns that the image may not be this checkout's code).
PUSHED_REVISION=$REVISION
if [[ $REVISION != unknown && -n $(git -C "$REPO" status --porcelain -- src pyproject.toml docker 2>/dev/null) ]]; then
  PUSHED_REVISION=$REVISION-dirty
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/arcface-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- 1. the arcface-kfp wheel (from a copy of the checkout: no build/ or egg-info left in the tree) ----
build_own_wheel() {
  local src=$work/src dist=$work/dist
  mkdir -p "$src" "$dist"
  cp -a "$REPO/pyproject.toml" "$src/"
  for f in README.md LICENSE LICENSE.txt MANIFEST.in setup.cfg; do
    [[ -e $REPO/$f ]] && cp -a "$REPO/$f" "$src/"
  done
  [[ -e $src/README.md ]] || echo "arcface-kfp" >"$src/README.md"   # pyproject names a readme
  tar -C "$REPO" --exclude='__pycache__' --exclude='*.egg-info' -cf - src | tar -C "$src" -xf -
  # Fixed timestamps inside the zip: an unchanged checkout gives a byte-identical wheel (warm layer cache).
  local pip_args=(wheel --no-deps -q -w "$dist")
  if [[ -n $offline_wheels ]]; then pip_args+=(--no-index --find-links "$offline_wheels"); fi
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800} quiet_pip "${pip_args[@]}" "$src" >&2
  OWN_WHEEL=$(ls "$dist"/arcface_kfp-*.whl)
  [[ $(basename "$OWN_WHEEL") == arcface_kfp-"$VERSION"-* ]] || { log "wheel $OWN_WHEEL is not version $VERSION"; exit 1; }
}

# ---- 2. the dependency wheels (cached by a hash of what is asked for) ----
requires_of_own_wheel() {
  # The wheel's Requires-Dist, one per line, markers kept (pip evaluates them). Requirements of extras are
  # dropped, except those of the extra named by an argument, which become plain ones.
  "$PYTHON" - "$OWN_WHEEL" "${1:-}" <<'PY'
import email.parser, re, sys, zipfile
wheel, extra = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    msg = email.parser.Parser().parsestr(z.read(meta).decode())
for req in msg.get_all("Requires-Dist") or []:
    spec, _, marker = req.partition(";")
    found = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
    if found is None:
        print(req)
    elif found.group(1) == extra and re.fullmatch(r"""\s*extra\s*==\s*['"][^'"]+['"]\s*""", marker):
        print(spec.strip())
    elif found.group(1) == extra:
        sys.exit(f"cannot flatten requirement with a compound extra marker: {req}")
PY
}

fetch_wheels() {
  local key
  key=$( { printf '%s\n' "${PINS[@]}" "${BUILD_REQS[@]}" "${VALIDATE_REQS[@]}"; requires_of_own_wheel "$IMAGE_EXTRA"; } | sha256sum | cut -c1-16)
  wheel_dir=${wheel_dir:-$CACHE/wheels/$key}
  if [[ -f $wheel_dir/.complete ]] && [[ $(cat "$wheel_dir/.complete") == "$key" ]]; then
    log "wheels cached in $wheel_dir"
    return
  fi
  mkdir -p "$wheel_dir"
  log "downloading wheels into $wheel_dir (pip wheel: sdist-only packages are built into wheels here)"
  local start=$SECONDS
  # Host and images are both CPython 3.11 / glibc x86_64 (Debian bookworm), so the host's pip picks
  # the right wheels.
  quiet_pip wheel -q -w "$wheel_dir" "${OWN_WHEEL}[$IMAGE_EXTRA]" "${PINS[@]}" "${BUILD_REQS[@]}" "${VALIDATE_REQS[@]}" >&2
  rm -f "$wheel_dir"/arcface_kfp-*.whl
  echo "$key" >"$wheel_dir/.complete"
  log "wheels downloaded in $((SECONDS - start)) s: $(du -sh "$wheel_dir" | cut -f1)"
}

write_constraints() {
  # name==version of every wheel in the dir; refuse a dir with two versions of one project.
  "$PYTHON" - "$1" <<'PY'
import pathlib, re, sys
seen = {}
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    name = re.sub(r"[-_.]+", "-", name).lower()
    if name == "arcface-kfp":
        continue
    if name in seen and seen[name] != version:
        sys.exit(f"two versions of {name} in {sys.argv[1]}: {seen[name]} and {version}")
    seen[name] = version
for name, version in seen.items():
    print(f"{name}=={version}")
PY
}

write_requirements() {
  # requirements/<flavor>.txt inside a context dir.
  local flavor=$1 out=$2
  case $flavor in
    cpu)
      # The wheel's own requirements with those of the serve extra (`arcface serve`: kserve, faiss), plus
      # the top-level pins.
      { requires_of_own_wheel "$IMAGE_EXTRA"; printf '%s\n' "${PINS[@]}"; } >"$out" ;;
    gpu)
      # As cpu, minus TensorFlow itself (the GPU base brings it).
      write_requirements cpu "$out.tmp"
      grep -v -i -E '^tensorflow(-cpu)?([ <>=!~;\[]|$)' "$out.tmp" >"$out"
      rm -f "$out.tmp" ;;
    validate) printf '%s\n' "${VALIDATE_REQS[@]}" >"$out" ;;
  esac
}

# ---- 3. images ----
make_context() {
  local flavor=$1 ctx=$work/context-$1
  mkdir -p "$ctx/requirements"
  # Hard links when the wheel dir is on the same filesystem (no copy of ~400 MB), else a copy.
  cp -al "$wheel_dir" "$ctx/wheels" 2>/dev/null || cp -a "$wheel_dir" "$ctx/wheels"
  rm -f "$ctx/wheels/.complete"
  cp -a "$work/dist" "$ctx/dist"
  write_constraints "$wheel_dir" >"$ctx/requirements/constraints.txt"
  write_requirements "$flavor" "$ctx/requirements/$flavor.txt"
  echo "$ctx"
}

build_image() {
  local flavor=$1 tag=$2 dockerfile=$3 base=$4 ctx start old new
  ctx=$(make_context "$flavor")
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  start=$SECONDS
  log "building $tag (base $base)"
  # Classic builder: works with any client/daemon pair here (no buildx plugin is installed).
  DOCKER_BUILDKIT=0 docker build -q \
    -f "$dockerfile" \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "VERSION=$VERSION" \
    --build-arg "SOURCE=$SOURCE_URL" \
    --build-arg "REVISION=$REVISION" \
    -t "$tag" "$ctx" >"$work/build-$flavor.log" 2>&1 \
    || { cat "$work/build-$flavor.log" >&2; log "build of $tag failed"; exit 1; }
  new=$(docker image inspect -f '{{.Id}}' "$tag")
  # The image this tag named before is now untagged: drop it (only its own top layers go; the
  # dependency stage stays cached). Not `docker image prune`, which would drop that cache too.
  if [[ -n $old && $old != "$new" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
  log "built $tag in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}'))"
  rm -rf "$ctx"
}

# ---- 4. push (--push) ----
registry_of() {
  # The registry host of a repository as docker reads it: a first component with a dot or a port, or localhost.
  local first=${1%%/*}
  if [[ $1 == */* && ( $first == *.* || $first == *:* || $first == localhost ) ]]; then echo "$first"; else echo "Docker Hub"; fi
}

push_hint() {
  local out=$1 registry
  registry=$(registry_of "$REPOSITORY")
  case $out in
    *"HTTP response to HTTPS client"*)
      echo "the registry $registry speaks plain http, which the engine allows only for registries on 127.0.0.0/8" \
           "(or named by dockerd --insecure-registry): serve it with TLS, or reach it through 127.0.0.1 (e.g. ssh -L)" ;;
    *"connection refused"*|*"no such host"*|*"i/o timeout"*|*"dial tcp"*|*"connection reset"*)
      echo "nothing answers at $registry: start the registry, or fix ARCFACE_IMAGE_REPOSITORY=$REPOSITORY" ;;
    *unauthorized*|*denied*|*"authentication required"*)
      echo "the registry $registry refused the push: log in first (docker login $registry) and check that you may push to $REPOSITORY" ;;
    *)
      echo "see docker's output above; check that the registry $registry is up and that ARCFACE_IMAGE_REPOSITORY=$REPOSITORY names it" ;;
  esac
}

push_image() {
  local flavor=$1 tag=$2 out digest ref start=$SECONDS
  log "pushing $tag"
  if ! out=$(docker push "$tag" 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    log "push of $tag failed: $(push_hint "$out")"
    exit 1
  fi
  # docker push ends with "<tag>: digest: sha256:... size: N"; else the image's RepoDigests for this name.
  digest=$(printf '%s\n' "$out" | grep -oE 'digest: sha256:[0-9a-f]{64}' | tail -n 1 | cut -d' ' -f2 || true)
  if [[ -z $digest ]]; then
    digest=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$tag" | grep -F "${tag%:*}@" | head -n 1 | cut -d@ -f2 || true)
  fi
  if [[ -z $digest ]]; then printf '%s\n' "$out" >&2; log "pushed $tag but docker reported no digest (output above)"; exit 1; fi
  ref=$(PYTHONPATH=$REPO/src "$PYTHON" -m arcface images record --file "$digests_file" --flavor "$flavor" \
          --digest "$digest" --revision "$PUSHED_REVISION")
  log "pushed $ref in $((SECONDS - start)) s; recorded in $digests_file"
}

build_own_wheel
if [[ -n $offline_wheels ]]; then
  [[ -d $offline_wheels ]] || { log "--offline-wheels $offline_wheels: no such directory"; exit 1; }
  wheel_dir=$(cd "$offline_wheels" && pwd)
  log "offline: wheels from $wheel_dir"
else
  fetch_wheels
fi
if [[ $download_only == 1 ]]; then
  echo "$wheel_dir"
  exit 0
fi

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || { log "no Docker engine at ${DOCKER_HOST:-the default socket}; run: eval \"\$(docker/engine.sh start)\""; exit 1; }

if [[ -n $base_override ]]; then
  base=$base_override
else
  base=$BASE_IMAGE
  "$REPO/docker/base-image.sh" "$base"
fi

IFS=, read -r -a wanted <<<"$flavors"
built=()
for flavor in "${wanted[@]}"; do
  case $flavor in
    cpu) build_image cpu "$CPU_IMAGE" "$REPO/docker/Dockerfile" "$base"; built+=("cpu=$CPU_IMAGE") ;;
    validate) build_image validate "$VALIDATE_IMAGE" "$REPO/docker/Dockerfile.validate" "$base"; built+=("validate=$VALIDATE_IMAGE") ;;
    gpu)
      if docker image inspect "$gpu_base" >/dev/null 2>&1; then
        build_image gpu "$GPU_IMAGE" "$REPO/docker/Dockerfile.gpu" "$gpu_base"; built+=("gpu=$GPU_IMAGE")
      else
        log "skipping gpu: base image $gpu_base is not in the engine (no registry here; docker load it, or --gpu-base IMAGE)"
        if [[ $push == 1 ]]; then log "gpu is not built, so not pushed: the pipeline keeps its tag until it is"; fi
      fi ;;
    *) log "unknown flavor $flavor"; exit 2 ;;
  esac
done
docker images --filter "reference=$(dirname "$CPU_IMAGE")/*" >&2
if [[ $push == 1 ]]; then
  for item in "${built[@]}"; do push_image "${item%%=*}" "${item#*=}"; done
  log "compile with these digests: ARCFACE_IMAGE_REPOSITORY=$REPOSITORY python pipeline.py compile" \
      "$( [[ $digests_file == "$DIGESTS_FILE" ]] || echo "--image-digests $digests_file")"
fi
