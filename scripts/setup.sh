#!/usr/bin/env bash
# One command on a fresh machine: installs what is missing, builds the host and the plugins,
# starts a local nats-server with JetStream if none is reachable, and runs the fraud demo.
set -euo pipefail
USER_PATH="$PATH"   # before env.sh adds the tool folders to it
source "$(dirname "$0")/env.sh"
cd "$EDDY_ROOT"

ensure_tools
say "building the plugins (wasm32-wasip2 components)"
bash scripts/build-plugins.sh
say "building the eddy host (first build compiles RocksDB and wasmtime: about 30 minutes on 2 cores)"
cargo build --bin eddy
# `eddy` on the PATH: a link to the build, so every later build is the one that runs.
mkdir -p "$HOME/.local/bin"
ln -sf "$CARGO_TARGET_DIR/debug/eddy" "$HOME/.local/bin/eddy"
# What `eddy new` projects build against, outside this checkout (the SDKs, the contract,
# the language build scripts).
say "installed the plugin SDKs and build scripts in $(bash scripts/install-share.sh)"
case ":$USER_PATH:" in
  *":$HOME/.local/bin:"*) say "eddy is installed: $HOME/.local/bin/eddy" ;;
  *) say "eddy is installed as $HOME/.local/bin/eddy; add $HOME/.local/bin to your PATH" ;;
esac
exec bash examples/fraud/run.sh
