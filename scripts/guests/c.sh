#!/usr/bin/env bash
# Builds Eddy plugins written in C (guest-sdk/c) as WebAssembly components.
#
# Usage:
#   scripts/guests/c.sh tools                     install the pinned tools (idempotent)
#   scripts/guests/c.sh build <plugin-dir> <out>  build the *.c files of <plugin-dir> with the
#                                                 C layer into the component <out>
#   scripts/guests/c.sh                           tools, then both samples to
#                                                 $HOME/.cache/eddy/plugins-target/guests/
#
# Toolchain: Debian's clang 14 with wasi-libc, lld 14 and compiler-rt for wasm32 (apt);
# `wit-bindgen c` (wit-bindgen-cli 0.63.0) for the bindings, generated at build time into
# $HOME/.cache/eddy/guests/c-bindings-<wit hash>; `wasm-tools component new` (1.262.0).
# CFLAGS adds compiler flags (default -O2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=wasm-tools.sh
source "$here/wasm-tools.sh"

LLVM_VERSION=14
APT_PACKAGES=("clang-$LLVM_VERSION" "lld-$LLVM_VERSION" wasi-libc "libclang-rt-$LLVM_VERSION-dev-wasm32")
CLANG="clang-$LLVM_VERSION"
SYSROOT=/usr  # Debian installs wasi-libc as a multiarch target under /usr
SDK="$EDDY_ROOT/guest-sdk/c"

ensure_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        guest_say "installing ${missing[*]} (apt)"
        local sudo=""
        [[ "$(id -u)" == 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

cmd_tools() {
    ensure_apt
    ensure_wasm_tools
    ensure_wit_bindgen
}

cmd_build() {
    local plugin_dir="${1:?usage: c.sh build <plugin-dir> <out.wasm>}"
    local out="${2:?usage: c.sh build <plugin-dir> <out.wasm>}"
    [[ -d "$plugin_dir" ]] || { echo "error: no directory $plugin_dir" >&2; exit 1; }
    local gen work
    gen="$(wit_bindings c full_processor_component_type.o)"
    work="$(mktemp -d "${TMPDIR:-/tmp}/eddy-c.XXXXXX")"
    local sources=("$plugin_dir"/*.c)
    [[ -e "${sources[0]}" ]] || { echo "error: no .c files in $plugin_dir" >&2; exit 1; }
    # -mexec-model=reactor: a library with exports and no main.
    # shellcheck disable=SC2086
    "$CLANG" --target=wasm32-wasi --sysroot="$SYSROOT" -mexec-model=reactor \
        ${CFLAGS:--O2} -std=c11 -Wall -Wextra -Wno-unused-parameter \
        -I "$SDK" -I "$gen" -I "$plugin_dir" \
        "${sources[@]}" "$SDK/eddy.c" "$SDK/eddy_json.c" \
        "$gen/full_processor.c" "$gen/full_processor_component_type.o" \
        -Wl,--strip-all -o "$work/core.wasm"
    mkdir -p "$(dirname "$out")"
    "$WASM_TOOLS" component new "$work/core.wasm" -o "$out"
    rm -rf "$work"
    "$WASM_TOOLS" validate "$out"
}

samples() {
    local plugin
    mkdir -p "$EDDY_GUEST_OUT"
    for plugin in fraud-enrich dedupe-filter; do
        cmd_build "$EDDY_ROOT/plugins/$plugin-c" "$EDDY_GUEST_OUT/$plugin-c.wasm"
        report_component "$EDDY_GUEST_OUT/$plugin-c.wasm"
    done
}

case "${1:-}" in
    tools) cmd_tools ;;
    build) shift; cmd_build "$@" ;;
    "") cmd_tools; samples ;;
    *) echo "usage: $0 [tools | build <plugin-dir> <out.wasm>]" >&2; exit 2 ;;
esac
