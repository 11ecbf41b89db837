#!/usr/bin/env bash
# The test command: installs what is missing, builds the plugins and the host, and runs every
# test against real nats-server processes the tests start themselves.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$EDDY_ROOT"

ensure_tools
bash scripts/build-plugins.sh
say "building"
cargo build --workspace --bins --tests
say "testing"
cargo test --workspace -- "$@"
