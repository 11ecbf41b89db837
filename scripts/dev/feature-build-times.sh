#!/usr/bin/env bash
# What the workspace's trimmed feature sets save in a first build: wasmtime and wasmtime-wasi
# built alone in an empty crate and a fresh target directory, with the features Eddy names in
# Cargo.toml and then with their defaults; and the compression libraries that RocksDB's default
# features would add (zstd, zlib and bzip2 as their own crates, snappy's three sources as
# librocksdb-sys compiles them). Same profile as the workspace (dependencies at opt-level 3).
# Takes about 12 minutes on two cores; run it on an otherwise idle machine.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
profile='[profile.dev]
debug = "line-tables-only"
[profile.dev.package."*"]
opt-level = 3
debug-assertions = false
overflow-checks = false'
ours_wasmtime="$(grep '^wasmtime = ' "$EDDY_ROOT/Cargo.toml")"
ours_wasi="$(grep '^wasmtime-wasi = ' "$EDDY_ROOT/Cargo.toml")"
version="$(grep -A1 '^name = "wasmtime"$' "$EDDY_ROOT/Cargo.lock" | sed -n 's/version = "\(.*\)"/\1/p')"
crate() { # name, dependency lines
  mkdir -p "$work/$1/src"
  echo 'fn main() {}' >"$work/$1/src/main.rs"
  printf '[package]\nname = "%s"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s\n%s\n' \
    "$1" "$2" "$profile" >"$work/$1/Cargo.toml"
}
crate ours "$(printf '%s\n%s' "${ours_wasmtime/\"48\"/\"=$version\"}" "${ours_wasi/\"48\"/\"=$version\"}")"
crate defaults "$(printf 'wasmtime = "=%s"\nwasmtime-wasi = "=%s"' "$version" "$version")"
crate codecs 'zstd-sys = { version = "2.0", features = ["legacy", "zdict_builder"] }
libz-sys = { version = "1.1", default-features = false, features = ["static"] }
bzip2-sys = { version = "0.1", default-features = false, features = ["static"] }'
timed() { # label, crate
  local start=$SECONDS
  (cd "$work/$2" && CARGO_TARGET_DIR="$work/target-$2" cargo build -q)
  printf '%-58s %5d s\n' "$1" $((SECONDS - start))
}
timed "wasmtime + wasmtime-wasi $version, Eddy's features" ours
timed "wasmtime + wasmtime-wasi $version, default features" defaults
timed "zstd-sys, libz-sys, bzip2-sys (RocksDB's other codecs)" codecs
rocks="$(ls -d "$HOME"/.cargo/registry/src/*/librocksdb-sys-* | sort | tail -1)"
start=$SECONDS
for f in snappy.cc snappy-sinksource.cc snappy-c.cc; do
  c++ -O3 -std=c++11 -DNDEBUG -I "$rocks/snappy" -I "$rocks" -c "$rocks/snappy/$f" -o "$work/$f.o"
done
printf '%-58s %5d s\n' "snappy, as librocksdb-sys compiles it" $((SECONDS - start))
