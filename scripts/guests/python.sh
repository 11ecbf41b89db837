#!/usr/bin/env bash
# Builds Eddy plugins written in Python as WebAssembly components.
#
# Usage:
#   scripts/guests/python.sh tools                       install the pinned toolchain
#   scripts/guests/python.sh build <plugin-dir> <out>    build one plugin (its module is app.py)
#   scripts/guests/python.sh test                        the layer's JSON shortcuts against
#                                                        the standard library, natively
#                                                        (guest-sdk/python/test/test_codec.py)
#   scripts/guests/python.sh fuzz <corpus> <seconds>     atheris on the layer's decoders
#                                                        (guest-sdk/python/test/fuzz_layer.py)
#   scripts/guests/python.sh                             tools + build the Python samples and
#                                                        escape-python into
#                                                        $HOME/.cache/eddy/plugins-target/guests/
#
# Toolchain: `componentize-py` from PyPI, in a virtualenv under $HOME/.cache/eddy/tools/python/.
# It is the one maintained way to build a Python component: its wheel carries CPython compiled
# to wasm32-wasip2 and links the plugin's code and the layer (guest-sdk/python/eddy.py) into a
# snapshot, so nothing else (no wasi-sdk, no wasm-tools) is needed.
#
# WASI: by default the component imports WASI p2 (filesystem, sockets, clocks, random, CLI),
# which the host links in a closed context: files, sockets and the environment are denied,
# `print` goes to the host's log, `time.time()` and `random` work. With `--stub-wasi`
# (EDDY_PY_STUB_WASI=1) the component imports nothing but eddy:plugin, but then any standard
# library call that reaches WASI (`time.time()`, `random`, `print`, `os.environ`) traps the
# instance instead of failing as an exception, which is a poor default for plugin authors.
# escape-python is always built unstubbed: it exists to show what the host's WASI denies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${EDDY_TOOLS_DIR:-$HOME/.cache/eddy/tools}/python"
OUT_DIR="${EDDY_PLUGIN_TARGET_DIR:-$HOME/.cache/eddy/plugins-target}/guests"

# Pinned versions.
COMPONENTIZE_PY_VERSION=0.25.1
ATHERIS_VERSION=3.0.0  # fuzzing only (PyPI wheel, libFuzzer inside)

VENV="$TOOLS/venv"
CPY="$VENV/bin/componentize-py"

tools() {
    if [[ -x "$CPY" ]] && [[ "$("$CPY" --version 2>/dev/null)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
        return 0
    fi
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys, venv; assert sys.version_info >= (3, 9)' 2>/dev/null; then
        echo "python.sh: Python 3.9+ with the venv module is needed (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
    echo "python.sh: installing componentize-py==$COMPONENTIZE_PY_VERSION into $VENV" >&2
    mkdir -p "$TOOLS"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "componentize-py==$COMPONENTIZE_PY_VERSION" >&2
}

# build <plugin-dir> <out.wasm> [stub: 0/1]
build() {
    local dir="$1" out="$2" stub="${3:-${EDDY_PY_STUB_WASI:-0}}"
    if [[ ! -f "$dir/app.py" ]]; then
        echo "python.sh: $dir/app.py not found (a Python plugin's module is app.py)" >&2
        exit 1
    fi
    [[ -x "$CPY" ]] || tools
    local flags=()
    if [[ "$stub" == 1 ]]; then
        flags+=(--stub-wasi)
    fi
    mkdir -p "$(dirname "$out")"
    local abs_dir abs_out
    abs_dir="$(cd "$dir" && pwd)"
    abs_out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
    # componentize-py runs in a temporary directory so that nothing lands in the repository,
    # and the layer is staged alone there, so that only eddy.py (not the guide or the
    # template) is on the component's Python path.
    local work
    work="$(mktemp -d)"
    mkdir -p "$work/sdk"
    cp "$ROOT/guest-sdk/python/eddy.py" "$work/sdk/"
    if ! (cd "$work" && RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$CPY" -d "$ROOT/wit" \
        -w full-processor componentize -p "$abs_dir" -p "$work/sdk" "${flags[@]}" app \
        -o "$abs_out" >/dev/null 2>"$work/report"); then
        # The plugin's own error first, with its own paths: componentize-py reports it from
        # inside its snapshot (the plugin is /0/ there), after its wrapper's traceback.
        local own
        own="$(sed -n '/^AssertionError: /,/^Caused by:/p' "$work/report" | sed '$d' \
            | sed -e 's/^AssertionError: //' -e "s#\"/0/#\"$abs_dir/#")"
        if [[ -n "$own" ]]; then
            printf 'python.sh: %s does not build:\n%s\n\n(componentize-py'"'"'s whole report:)\n' \
                "$abs_dir" "$own" >&2
        fi
        cat "$work/report" >&2
        rm -rf "$work"
        return 1
    fi
    rm -rf "$work"
    # Keep the plugin directory clean of the bytecode cache componentize-py may leave.
    rm -rf "$abs_dir/__pycache__"
}

# atheris (libFuzzer for CPython) on the layer's decoders, natively, in a virtualenv of its
# own. The corpus directory is kept between runs; a failing input is left beside it in
# ../artifacts/<name>/.
fuzz() {
    local corpus="$1" seconds="$2" venv="$TOOLS/fuzz-venv" artifacts
    if ! "$venv/bin/python" -c "import atheris" 2>/dev/null; then
        "${PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/pip" install --quiet "atheris==$ATHERIS_VERSION"
    fi
    artifacts="$(dirname "$corpus")/../artifacts/$(basename "$corpus")"
    mkdir -p "$corpus" "$artifacts"
    "$venv/bin/python" "$ROOT/guest-sdk/python/test/fuzz_layer.py" "$corpus" \
        -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts/"
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
        test)
            "${PYTHON:-python3}" "$ROOT/guest-sdk/python/test/test_codec.py"
            ;;
        fuzz)
            if [[ $# -ne 3 ]]; then
                echo "usage: $0 fuzz <corpus-dir> <seconds>" >&2
                exit 2
            fi
            fuzz "$2" "$3"
            ;;
        "")
            tools
            mkdir -p "$OUT_DIR"
            local plugin out
            for plugin in fraud-enrich dedupe-filter; do
                out="$OUT_DIR/$plugin-python.wasm"
                build "$ROOT/plugins/$plugin-python" "$out"
                echo "$out $(size_of "$out") bytes"
            done
            out="$OUT_DIR/escape-python.wasm"
            build "$ROOT/plugins/escape-python" "$out" 0
            echo "$out $(size_of "$out") bytes"
            ;;
        *)
            echo "usage: $0 [tools | build <plugin-dir> <out.wasm> | test | fuzz <corpus-dir> <seconds>]" >&2
            exit 2
            ;;
    esac
}

main "$@"
