#!/usr/bin/env bash
# Builds this plugin into a WebAssembly component: ./{{name}}.wasm
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
target="${CARGO_TARGET_DIR:-target}"
cp "$target/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
