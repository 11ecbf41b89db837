#!/usr/bin/env bash
# Builds the Rust plugins in plugins/ as WebAssembly components (target wasm32-wasip2, profile
# `plugin`) and prints where each one is and how big it is.
#
# Usage: scripts/build-plugins.sh [extra cargo build arguments]
# Environment: EDDY_PLUGIN_TARGET_DIR, the cargo target directory
#              (default: $HOME/.cache/eddy/plugins-target).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

plugins=(passthrough counter fraud-enrich dedupe-filter chaos)
target=wasm32-wasip2
profile=plugin
target_dir="${EDDY_PLUGIN_TARGET_DIR:-$HOME/.cache/eddy/plugins-target}"

if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing the Rust target $target" >&2
    rustup target add "$target"
fi

packages=()
for plugin in "${plugins[@]}"; do
    packages+=(-p "$plugin")
done

CARGO_TARGET_DIR="$target_dir" cargo build --profile "$profile" --target "$target" "${packages[@]}" "$@"

# `faulty`, broken two ways (for the hot-reload tests): each build is its own version. Built
# in its own target directory, so the two builds do not invalidate each other.
for mode in trap init; do
    EDDY_FAULTY="$mode" CARGO_TARGET_DIR="$target_dir/faulty-$mode" \
        cargo build --profile "$profile" --target "$target" -p faulty "$@"
    cp "$target_dir/faulty-$mode/$target/$profile/faulty.wasm" \
        "$target_dir/$target/$profile/faulty_$mode.wasm"
done

# `fraud-enrich` built as its `strict` variant (for the shadow-deploy tests): another version
# of the same plugin that flags more transactions and keeps one more state.
EDDY_FRAUD_VARIANT=strict CARGO_TARGET_DIR="$target_dir/fraud-strict" \
    cargo build --profile "$profile" --target "$target" -p fraud-enrich "$@"
cp "$target_dir/fraud-strict/$target/$profile/fraud_enrich.wasm" \
    "$target_dir/$target/$profile/fraud_enrich_strict.wasm"

for plugin in "${plugins[@]}" faulty-trap faulty-init fraud-enrich-strict; do
    wasm="$target_dir/$target/$profile/${plugin//-/_}.wasm"
    if [[ ! -f "$wasm" ]]; then
        echo "error: $plugin was built but $wasm is missing" >&2
        exit 1
    fi
    printf '%s\t%s bytes\n' "$wasm" "$(wc -c <"$wasm" | tr -d ' ')"
done
