#!/usr/bin/env bash
# Installs and starts what sandboxd needs, idempotently; quick when everything is already there.
#   scripts/setup.sh [python] [docker] [gvisor] [qemu] [postgres] [image] ...
# Fails loudly (non-zero) when a component cannot be installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq || die "apt-get update"
    APT_UPDATED=1
  fi
  log "installing ${missing[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]}"
}

setup_python() {
  if ! command -v uv >/dev/null 2>&1; then
    log "installing uv from PyPI"
    python3 -m pip install -q uv || die "pip install uv"
  fi
  uv sync --frozen -q || die "uv sync"
}

setup_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  # Debian's docker.io ships /usr/bin/docker; an older client earlier on PATH may be too new or too
  # old for its engine, so always talk to the engine with the packaged one when it exists.
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/sandboxd-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { log "dockerd is up"; return 0; }
    sleep 0.5
  done
  tail -n 20 /var/log/sandboxd-dockerd.log >&2 || true
  die "dockerd did not start (log: /var/log/sandboxd-dockerd.log)"
}

setup_image_tools() {
  apt_install debootstrap
}

setup_qemu() {
  apt_install qemu-system-x86 qemu-utils busybox-static zstd e2fsprogs
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing after install"
  # QEMU runs as this unprivileged system user when the service is root (adapter/qemu/process.py):
  # no home, no shell, no files of its own; the host passes it descriptors for what it needs.
  if ! getent passwd sandboxd-qemu >/dev/null; then
    $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sandboxd-qemu || die "cannot create user sandboxd-qemu"
  fi
  # KVM, where usable, needs /dev/kvm, which belongs to group kvm.
  if getent group kvm >/dev/null; then
    $SUDO usermod -a -G kvm sandboxd-qemu
  fi
}

setup_ops_tools() {
  # Only the tests of the operator-facing files need these; the service never does: headless
  # Chromium renders /docs, promtool checks the alert rules, systemd-analyze the unit file and
  # docker-compose the compose file; node runs the TypeScript client's tests, whose one dev
  # dependency (typescript, pinned in package-lock.json) comes from the npm registry here, so
  # that the tests themselves need no network.
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  apt_install chromium fonts-dejavu-core prometheus systemd docker-compose
  for tool in chromium promtool systemd-analyze docker-compose node npm; do
    command -v "$tool" >/dev/null || die "$tool missing after install"
  done
  if [ ! -x clients/typescript/node_modules/.bin/tsc ]; then
    log "npm ci in clients/typescript"
    (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci (clients/typescript)"
  fi
}

setup_gvisor() {
  # gVisor for SANDBOXD_DOCKER_RUNTIME=runsc: Debian's runsc (a 2022 build) registered with dockerd.
  # ptrace because this build predates the kernels' systrap support; --network=none because
  # sandboxes have no network and runsc refuses to start here otherwise; --host-uds=create so that
  # the agent's socket, bound inside the sandbox on a bind mount, appears on the host.
  setup_docker
  apt_install runsc
  [ -x /usr/bin/runsc ] || die "/usr/bin/runsc missing after install"
  local config=/etc/docker/daemon.json
  local changed
  changed=$($SUDO python3 - "$config" <<'PY'
import json, os, sys
path = sys.argv[1]
wanted = {"path": "/usr/bin/runsc",
          "runtimeArgs": ["--platform=ptrace", "--network=none", "--host-uds=create"]}
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    config = json.loads(text) if text else {}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == wanted:
    print("no")
else:
    runtimes["runsc"] = wanted
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".sandboxd-tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print("yes")
PY
) || die "cannot merge runsc into $config"
  if [ "$changed" = yes ] || ! docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; then
    log "registering runsc with dockerd (SIGHUP reloads $config)"
    local pid
    pid=$(pgrep -o -x dockerd) || die "dockerd is not running; cannot reload $config"
    $SUDO kill -HUP "$pid"
  fi
  for _ in $(seq 1 20); do
    docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' && return 0
    sleep 0.5
  done
  die "dockerd does not list runsc in its runtimes after reloading $config"
}

setup_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  [ -n "$version" ] || die "no PostgreSQL cluster configured"
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 40); do
    pg_isready -q -h 127.0.0.1 -p 5432 && { log "PostgreSQL is up"; return 0; }
    sleep 0.5
  done
  die "PostgreSQL did not start on 127.0.0.1:5432"
}

as_postgres() {
  # As root $SUDO is empty, and "-u postgres psql" alone is no command: switch user explicitly.
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else (cd / && sudo -u postgres "$@"); fi
}

setup_postgres_role() {
  # The tests' own role (each test session creates and drops its own database with it); never
  # touches anything else on the server.
  as_postgres psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='sandboxd'" | grep -q 1 \
    || as_postgres psql -qc "CREATE ROLE sandboxd LOGIN PASSWORD 'sandboxd' CREATEDB" \
    || die "creating PostgreSQL role sandboxd"
}

setup_image() {
  # The root filesystem needs debootstrap; the Docker image needs a running engine.
  setup_image_tools
  [ "${SANDBOXD_RUNTIME:-docker}" != docker ] || setup_docker
  uv run --frozen sandboxd image build ${SANDBOXD_RUNTIME:+--runtime "$SANDBOXD_RUNTIME"} \
    || die "building the sandbox image"
}

[ $# -gt 0 ] || set -- python
for component in "$@"; do
  case "$component" in
    python) setup_python ;;
    docker) setup_docker ;;
    image-tools) setup_image_tools ;;
    qemu) setup_qemu ;;
    gvisor) setup_gvisor ;;
    postgres) setup_postgres; setup_postgres_role ;;
    ops-tools) setup_ops_tools ;;
    image) setup_image ;;
    *) die "unknown component $component" ;;
  esac
done
