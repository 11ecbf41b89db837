#!/usr/bin/env bash
# One command on a fresh machine: installs what is missing, builds the host and the plugins,
# starts a local nats-server with JetStream if none is reachable, and runs the fraud demo.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$EDDY_ROOT"

ensure_tools
say "building the plugins (wasm32-wasip2 components)"
bash scripts/build-plugins.sh
say "building the eddy host (first build compiles RocksDB and wasmtime: 15-25 minutes on 2 cores)"
cargo build --bin eddy
exec bash examples/fraud/run.sh
