#!/usr/bin/env bash
# Start / stop a private Docker engine (dockerd) for building and testing the arcface-kfp images.
#
#   docker/engine.sh start    # start (or reuse) the private dockerd; prints  export DOCKER_HOST=...
#   docker/engine.sh stop     # stop the dockerd this script started, by its pid (and wait for it)
#   docker/engine.sh status   # exit 0 and print DOCKER_HOST when it is running, 1 otherwise
#   docker/engine.sh env      # print  export DOCKER_HOST=unix://...  (for eval)
#
# Everything lives under one directory, $ARCFACE_DOCKER_ENGINE_DIR, default
# $ARCFACE_DOCKER_CACHE/engine (ARCFACE_DOCKER_CACHE defaults to /var/cache/arcface-docker for root,
# ${XDG_CACHE_HOME:-~/.cache}/arcface-docker otherwise):
#   data/          --data-root   (images and build cache: survives stop/start, so rebuilds are warm)
#   exec/          --exec-root   (runtime state; the managed containerd lives here too)
#   docker.sock    the API socket  -> DOCKER_HOST=unix://<dir>/docker.sock
#   dockerd.pid    --pidfile
#   dockerd.log    the engine's log
#
# The engine is private: its own socket, no TCP listener, --bridge=none (no docker0, no iptables/NAT
# rules, nothing that collides with another engine on a shared machine; containers get only a loopback
# interface, which is all the offline builds and kfp.local.DockerRunner need) and storage driver
# overlay2. overlay2 needs the data root on a filesystem that can be an overlayfs upper dir
# (ext4/xfs/tmpfs are fine; overlayfs-on-overlayfs, e.g. when this itself runs inside a container, is
# not): when it is not, set ARCFACE_DOCKER_LOOP_GIB=N and the data root becomes a loop-mounted ext4
# image of N GiB (file data.ext4 beside data/). Needs root (dockerd does) and the Debian package
# docker.io (dockerd, containerd, runc).
set -euo pipefail

if [[ $(id -u) -eq 0 ]]; then
  _default_cache=/var/cache/arcface-docker
else
  _default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/arcface-docker
fi
CACHE=${ARCFACE_DOCKER_CACHE:-$_default_cache}
DIR=${ARCFACE_DOCKER_ENGINE_DIR:-$CACHE/engine}
SOCK=$DIR/docker.sock
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
export DOCKER_HOST=unix://$SOCK

log() { echo "engine.sh: $*" >&2; }

running_pid() {
  # The pid in the pidfile, if that process is alive and is a dockerd.
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
  echo "$pid"
}

responds() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

check_overlay_fs() {
  # overlay2 cannot use an overlayfs (or another unsupported fs) as its backing filesystem.
  local fstype
  fstype=$(stat -f -c %T "$DIR/data")
  case $fstype in
    overlayfs|overlay|aufs|fuseblk|fuse|nfs|cifs|smb2)
      log "data root $DIR/data is on '$fstype', which overlay2 cannot use as backing filesystem;"
      log "rerun with ARCFACE_DOCKER_LOOP_GIB=40 (loop-mounted ext4) or ARCFACE_DOCKER_ENGINE_DIR on ext4/xfs/tmpfs"
      return 1 ;;
  esac
}

mount_loop_data_root() {
  local gib=$1 img=$DIR/data.ext4
  if mountpoint -q "$DIR/data"; then return 0; fi
  if [[ ! -f $img ]]; then
    log "creating ${gib} GiB ext4 image $img for the data root"
    truncate -s "${gib}G" "$img"
    mkfs.ext4 -q -F "$img"
  fi
  mount -o loop "$img" "$DIR/data"
}

cmd_start() {
  mkdir -p "$DIR/data" "$DIR/exec"
  if pid=$(running_pid); then
    if responds; then
      log "already running (pid $pid)"
      echo "export DOCKER_HOST=$DOCKER_HOST"
      return 0
    fi
  fi
  command -v dockerd >/dev/null || { log "dockerd not found: apt-get install -y docker.io"; return 1; }
  [[ $(id -u) -eq 0 ]] || { log "dockerd needs root"; return 1; }
  if [[ -n ${ARCFACE_DOCKER_LOOP_GIB:-} ]]; then
    mount_loop_data_root "$ARCFACE_DOCKER_LOOP_GIB"
  fi
  check_overlay_fs
  rm -f "$SOCK" "$PIDFILE"
  # dockerd starts and supervises its own containerd (under --exec-root) when none is given.
  # setsid: its own session, so a Ctrl-C or the end of the calling shell does not take it down half-way;
  # it is stopped only by `engine.sh stop`, by its pid.
  setsid dockerd \
    --data-root "$DIR/data" \
    --exec-root "$DIR/exec" \
    --pidfile "$PIDFILE" \
    -H "unix://$SOCK" \
    --storage-driver overlay2 \
    --bridge none \
    --iptables=false --ip6tables=false --ip-masq=false \
    --userland-proxy=false \
    --log-level warn \
    </dev/null >>"$LOG" 2>&1 &
  local started=$!
  for _ in $(seq 1 120); do
    if responds; then
      log "started dockerd pid $(cat "$PIDFILE" 2>/dev/null || echo "$started"), storage $(docker info --format '{{.Driver}}'), log $LOG"
      echo "export DOCKER_HOST=$DOCKER_HOST"
      return 0
    fi
    if ! kill -0 "$started" 2>/dev/null; then
      log "dockerd exited during start; last lines of $LOG:"
      tail -n 20 "$LOG" >&2
      return 1
    fi
    sleep 0.5
  done
  log "dockerd did not answer on $SOCK within 60 s; stopping it"
  kill "$started" 2>/dev/null || true
  return 1
}

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then
    log "not running"
    rm -f "$PIDFILE"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "dockerd $pid still alive after 30 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # dockerd stops the containerd it started; make sure by the containerd pidfile under exec-root.
  local cpidfile=$DIR/exec/containerd/containerd.pid cpid
  if [[ -f $cpidfile ]] && cpid=$(cat "$cpidfile") && kill -0 "$cpid" 2>/dev/null \
     && [[ $(cat "/proc/$cpid/comm" 2>/dev/null) == containerd ]]; then
    kill -TERM "$cpid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE" "$SOCK"
  # The loop-mounted data root (ARCFACE_DOCKER_LOOP_GIB) is unmounted; the image file stays for next time.
  if [[ -f $DIR/data.ext4 ]] && mountpoint -q "$DIR/data"; then umount "$DIR/data"; fi
  log "stopped dockerd $pid"
}

cmd_status() {
  local pid
  if pid=$(running_pid) && responds; then
    echo "running pid $pid DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  echo "not running"
  return 1
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
