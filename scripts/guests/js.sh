#!/usr/bin/env bash
# Builds Eddy plugins written in JavaScript as WebAssembly components.
#
# Usage:
#   scripts/guests/js.sh tools                       install the pinned toolchain (idempotent)
#   scripts/guests/js.sh build <plugin-dir> <out>    build one plugin (its entry is index.js)
#   scripts/guests/js.sh                             tools + build the JS sample plugins (and the
#                                                    codec-check test plugin) into
#                                                    $HOME/.cache/eddy/plugins-target/guests/
#
# Toolchain: `componentize-qjs` (QuickJS-ng embedded through wit-dylib, snapshotted with Wizer),
# installed from npm into $HOME/.cache/eddy/tools/js/. Why QuickJS rather than
# `@bytecodealliance/componentize-js` (SpiderMonkey): measured on this machine, the QuickJS
# component is ~1.7-1.9 MB instead of ~12 MB, compiles in ~2-3 s instead of 7-9 s and handles
# ~5x more calls per second; and its npm package is 38 MB / 2 s to install, against ~385 MB
# for jco + componentize-js. We call componentize-qjs directly (this is what
# `jco componentize --backend qjs` wraps) with:
#   --sync   the non-async runtime: the host does not enable the component-model async ABI;
#   no --stub-wasi by default: stubbed WASI makes `Date.now()` and `Math.random()` trap the
#            instance; unstubbed, the component imports WASI p2 (clocks, random, stdio,
#            filesystem types), which the host links in a closed context (no preopened files,
#            no sockets, no environment). Set EDDY_JS_STUB_WASI=1 to stub it anyway: the
#            component then imports nothing but eddy:plugin.
#   EDDY_JS_OPT_SIZE=1 adds --opt-size: the size-optimised QuickJS runtime (fraud-enrich-js:
#            1.3 MB instead of 1.9 MB, same outputs; its speed is not measured here).
# The layer (guest-sdk/js/eddy.js) is made importable as the bare module "eddy-sdk" by staging
# the plugin in a temporary directory with node_modules/eddy-sdk/.
#
# Bindings conventions of QuickJS (used by the layer): `option` none is `null`, u64 is a Number
# (exact up to 2^53), `list<u8>` is a Uint8Array.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${EDDY_TOOLS_DIR:-$HOME/.cache/eddy/tools}/js"
OUT_DIR="${EDDY_PLUGIN_TARGET_DIR:-$HOME/.cache/eddy/plugins-target}/guests"

# Pinned versions. componentize-qjs pins its native binding
# (@andreiltd/componentize-qjs-binding-linux-x64-gnu) to the same version.
COMPONENTIZE_QJS_VERSION=0.4.5

QJS="$TOOLS/node_modules/.bin/componentize-qjs"

# Staging directories, removed on exit.
STAGES=()
cleanup() {
    if ((${#STAGES[@]})); then
        rm -rf "${STAGES[@]}"
    fi
}
trap cleanup EXIT

tools() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "js.sh: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
    local installed=""
    if [[ -f "$TOOLS/node_modules/componentize-qjs/package.json" ]]; then
        installed="$(node -p "require('$TOOLS/node_modules/componentize-qjs/package.json').version")"
    fi
    if [[ "$installed" == "$COMPONENTIZE_QJS_VERSION" && -x "$QJS" ]]; then
        return 0
    fi
    echo "js.sh: installing componentize-qjs@$COMPONENTIZE_QJS_VERSION into $TOOLS" >&2
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --save-exact \
        "componentize-qjs@$COMPONENTIZE_QJS_VERSION" >&2
}

# build <plugin-dir> <out.wasm>
build() {
    local dir="$1" out="$2"
    if [[ ! -f "$dir/index.js" ]]; then
        echo "js.sh: $dir/index.js not found (a JS plugin's entry module is index.js)" >&2
        exit 1
    fi
    [[ -x "$QJS" ]] || tools
    local stage
    stage="$(mktemp -d)"
    STAGES+=("$stage")
    # The plugin's own files (any node_modules it has come along), then the layer.
    cp -R "$dir/." "$stage/"
    mkdir -p "$stage/node_modules/eddy-sdk"
    cp "$ROOT/guest-sdk/js/eddy.js" "$stage/node_modules/eddy-sdk/eddy.js"
    printf '{"name":"eddy-sdk","type":"module","main":"eddy.js"}\n' \
        > "$stage/node_modules/eddy-sdk/package.json"
    local flags=(--sync)
    if [[ "${EDDY_JS_STUB_WASI:-0}" == 1 ]]; then
        flags+=(--stub-wasi)
    fi
    if [[ "${EDDY_JS_OPT_SIZE:-0}" == 1 ]]; then
        flags+=(--opt-size)
    fi
    mkdir -p "$(dirname "$out")"
    local abs_out
    abs_out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
    (cd "$stage" && "$QJS" --wit "$ROOT/wit" --world full-processor --js index.js \
        --module-root . "${flags[@]}" -o "$abs_out" >/dev/null)
}

size_of() {
    stat -c %s "$1"
}

main() {
    case "${1:-}" in
        tools)
            tools
            ;;
        build)
            if [[ $# -ne 3 ]]; then
                echo "usage: $0 build <plugin-dir> <out.wasm>" >&2
                exit 2
            fi
            build "$2" "$3"
            ;;
        "")
            tools
            mkdir -p "$OUT_DIR"
            local plugin out
            # codec-check: the test plugin that checks the layer's JSON and UTF-8 code.
            for plugin in fraud-enrich dedupe-filter codec-check; do
                out="$OUT_DIR/$plugin-js.wasm"
                build "$ROOT/plugins/$plugin-js" "$out"
                echo "$out $(size_of "$out") bytes"
            done
            ;;
        *)
            echo "usage: $0 [tools | build <plugin-dir> <out.wasm>]" >&2
            exit 2
            ;;
    esac
}

main "$@"
