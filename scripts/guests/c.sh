#!/usr/bin/env bash
# Builds Eddy plugins written in C (guest-sdk/c) as WebAssembly components.
#
# Usage:
#   scripts/guests/c.sh tools                     install the pinned tools (idempotent)
#   scripts/guests/c.sh build <plugin-dir> <out>  build the *.c files of <plugin-dir> with the
#                                                 C layer into the component <out>
#   scripts/guests/c.sh test                      the layer's JSON code, natively with
#                                                 sanitizers (guest-sdk/c/test/json_test.c)
#   scripts/guests/c.sh fuzz <corpus> <seconds>   libFuzzer on the JSON reader and writer
#                                                 (guest-sdk/c/test/json_fuzz.c); a crash
#                                                 leaves its input in <corpus>/../artifacts
#   scripts/guests/c.sh                           tools, then both samples to
#                                                 $HOME/.cache/eddy/plugins-target/guests/
#
# Toolchain: Debian's clang 14 with wasi-libc, lld 14 and compiler-rt for wasm32 (apt);
# `wit-bindgen c` (wit-bindgen-cli 0.63.0) for the bindings, generated at build time into
# $HOME/.cache/eddy/guests/c-bindings-<wit hash>; `wasm-tools component new` (1.262.0).
# CFLAGS replaces the optimisation flags (default -O3).
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
    gen="$(wit_bindings c packed_processor_component_type.o packed-processor)"
    work="$(mktemp -d "${TMPDIR:-/tmp}/eddy-c.XXXXXX")"
    local sources=("$plugin_dir"/*.c)
    [[ -e "${sources[0]}" ]] || { echo "error: no .c files in $plugin_dir" >&2; exit 1; }
    # -mexec-model=reactor: a library with exports and no main.
    # shellcheck disable=SC2086
    "$CLANG" --target=wasm32-wasi --sysroot="$SYSROOT" -mexec-model=reactor \
        ${CFLAGS:--O3} -std=c11 -Wall -Wextra -Wno-unused-parameter \
        -I "$SDK" -I "$gen" -I "$plugin_dir" \
        "${sources[@]}" "$SDK/eddy.c" "$SDK/eddy_json.c" \
        "$gen/packed_processor.c" "$gen/packed_processor_component_type.o" \
        -Wl,--strip-all -o "$work/core.wasm"
    mkdir -p "$(dirname "$out")"
    "$WASM_TOOLS" component new "$work/core.wasm" -o "$out"
    rm -rf "$work"
    "$WASM_TOOLS" validate "$out"
}

# The JSON reader and writer need no component around them, so they are tested natively,
# where AddressSanitizer and UBSan can watch the fast paths' reads.
cmd_test() {
    local cc="${CC:-cc}" work
    command -v "$cc" >/dev/null || { echo "c.sh test: a native C compiler is needed ($cc)" >&2; exit 1; }
    work="$(mktemp -d "${TMPDIR:-/tmp}/eddy-c-test.XXXXXX")"
    "$cc" -std=c11 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined \
        -fno-sanitize-recover=all -I "$SDK" "$SDK/test/json_test.c" "$SDK/test/native.c" "$SDK/eddy_json.c" \
        -o "$work/json_test"
    # The test allocates without freeing, like the layer's per-event arena.
    ASAN_OPTIONS=detect_leaks=0 "$work/json_test"
    rm -rf "$work"
}

# libFuzzer on the JSON reader and writer, natively with AddressSanitizer and UBSan (clang's
# own libFuzzer, from Debian's clang package). The corpus directory is kept between runs.
cmd_fuzz() {
    local corpus="${1:?corpus directory}" seconds="${2:-300}" work artifacts
    work="$(mktemp -d "${TMPDIR:-/tmp}/eddy-c-fuzz.XXXXXX")"
    artifacts="$(dirname "$corpus")/../artifacts/$(basename "$corpus")"
    mkdir -p "$corpus" "$artifacts"
    "$CLANG" -std=c11 -O1 -g -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=all -I "$SDK" "$SDK/test/json_fuzz.c" "$SDK/test/native.c" "$SDK/eddy_json.c" \
        -o "$work/json_fuzz"
    local status=0
    "$work/json_fuzz" "$corpus" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" || status=$?
    rm -rf "$work"
    return $status
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
    test) cmd_test ;;
    fuzz) shift; cmd_fuzz "$@" ;;
    "") cmd_tools; samples ;;
    *) echo "usage: $0 [tools | build <plugin-dir> <out.wasm> | test | fuzz <corpus> <seconds>]" >&2; exit 2 ;;
esac
