#!/usr/bin/env bash
# Make the base image of the arcface-kfp images from scratch with debootstrap (no registry needed):
# Debian bookworm, variant minbase, plus python3 (3.11), python3-venv, python3-pip and ca-certificates.
#
#   docker/base-image.sh TAG          # e.g. arcface-kfp/base:0.1.0-bookworm (build.sh passes arcface.mlops.images.base_image())
#
# The root filesystem tarball is cached at $ARCFACE_DOCKER_CACHE/base/<key>.tar (key = hash of suite,
# packages and this script), so a second run only re-imports it, and does nothing at all when the
# image is already in the engine. The Debian mirror is read at run time from this machine's apt
# sources (deb822 /etc/apt/sources.list.d/*.sources or one-line /etc/apt/sources.list); override with
# ARCFACE_DEBIAN_MIRROR. Needs root, debootstrap (apt-get install -y debootstrap) and a running
# engine (DOCKER_HOST, see engine.sh).
set -euo pipefail

TAG=${1:?usage: base-image.sh TAG}
SUITE=${ARCFACE_DEBIAN_SUITE:-bookworm}
# libgomp1: OpenMP runtime that onnxruntime / some TF kernels dlopen; tiny.
PACKAGES=${ARCFACE_BASE_PACKAGES:-python3,python3-venv,python3-pip,ca-certificates,libgomp1}
if [[ $(id -u) -eq 0 ]]; then
  _default_cache=/var/cache/arcface-docker
else
  _default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/arcface-docker
fi
CACHE=${ARCFACE_DOCKER_CACHE:-$_default_cache}
log() { echo "base-image.sh: $*" >&2; }

if [[ ${ARCFACE_FORCE_BASE:-0} != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG already in the engine"
  exit 0
fi

key=$( { echo "$SUITE $PACKAGES"; cat "$0"; } | sha256sum | cut -c1-16)
tarball=$CACHE/base/$SUITE-minbase-$key.tar
mkdir -p "$CACHE/base"

debian_mirror() {
  # First Debian archive URI for $SUITE in this machine's apt sources (not -security / -updates).
  if [[ -n ${ARCFACE_DEBIAN_MIRROR:-} ]]; then echo "$ARCFACE_DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822 stanzas are separated by blank lines; take URIs of a stanza whose Suites has the bare suite.
    uri=$(awk -v suite="$SUITE" '
      BEGIN { RS=""; FS="\n" }
      {
        u=""; s=0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); u = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == suite) s = 1 }
        }
        if (s && u != "") { print u; exit }
      }' "$f")
    if [[ -n $uri ]]; then echo "$uri"; return; fi
  done
  if [[ -f /etc/apt/sources.list ]]; then
    uri=$(awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /^#/ {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit } }' /etc/apt/sources.list)
    if [[ -n $uri ]]; then echo "$uri"; return; fi
  fi
  return 1
}

if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || { log "debootstrap not found: apt-get install -y debootstrap"; exit 1; }
  mirror=$(debian_mirror) || { log "no Debian '$SUITE' source found in /etc/apt; set ARCFACE_DEBIAN_MIRROR"; exit 1; }
  root=$(mktemp -d "$CACHE/base/rootfs.XXXXXX")
  trap 'rm -rf --one-file-system "$root"' EXIT
  log "debootstrap --variant=minbase $SUITE from the apt mirror (packages: $PACKAGES)"
  start=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >"$CACHE/base/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/base/debootstrap.log" >&2; exit 1; }
  # Keep it small: no package caches or lists, no man pages / docs (copyright files stay), no locales.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  # debootstrap leaves the host's resolv.conf / hostname in; docker supplies both at run time.
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  log "rootfs built in $((SECONDS - start)) s: $(du -h "$tarball" | cut -f1)"
fi

docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase $SUITE + $PACKAGES" \
  "$tarball" "$TAG" >/dev/null
log "imported $TAG from $tarball"
