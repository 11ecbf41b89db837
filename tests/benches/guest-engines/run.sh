#!/usr/bin/env bash
# What each guest engine spends on fraud-enrich's own logic per event, before any host call:
# the floor under a JavaScript or Python plugin's speed, whatever the host and the layer do.
#
#   bash tests/benches/guest-engines/run.sh                  QuickJS (componentize-qjs) and
#                                                            CPython (componentize-py), the
#                                                            engines the project builds with
#   bash tests/benches/guest-engines/run.sh --spidermonkey   also SpiderMonkey
#                                                            (@bytecodealliance/componentize-js),
#                                                            interpreted and ahead-of-time
#                                                            compiled with weval; installs
#                                                            ~385 MB from npm and builds weval
#                                                            from crates.io (~8 min) once
#
# Each engine runs js/index.js or python/logic.py (with the plugin's own transaction module:
# plugins/fraud-enrich-{js,python}) inside a component under `eddy test` (the
# figure comes back as init's error); the baseline is the same file run natively by node
# (V8, with its JIT) or python3, in the same script. Compare the figures with the per-event
# budget that the goal of 0.2 of Rust's fraud-enrich allows: 1/(0.2 × Rust's events/s),
# ~34 µs per event for everything (parse, state, output, host calls) at the Rust figure in
# docs/BENCHMARKS.md.
#
# Then the whole fraud-enrich-js and -python plugins (layer, bindings, host calls), as the
# languages benchmark runs them, each against its engine's floor in the same round: what the
# layer and the host add on top of the logic (the project's goal: at most 1.3x the floor).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../../scripts/env.sh
source "$HERE/../../../scripts/env.sh"
TOOLS="${EDDY_TOOLS_DIR:-$HOME/.cache/eddy/tools}"
SM_VERSION=0.23.0   # @bytecodealliance/componentize-js
WEVAL_VERSION=0.5.0 # the weval its npm package expects (fetched from GitHub there; built here)

spidermonkey=0
[[ "${1:-}" == "--spidermonkey" ]] && spidermonkey=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build -q -p eddy-host --bin eddy
EDDY="$CARGO_TARGET_DIR/debug/eddy"
echo '{"k": "a"}' > "$work/event.jsonl"

# µs per event reported by a component's init.
in_component() {
    local out
    out="$("$EDDY" test "$1" "$work/event.jsonl" --key /k 2>&1 || true)"
    if [[ "$out" =~ logic:\ ([0-9.]+)\ us ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "run.sh: $1 did not report a figure: $out" >&2
        exit 1
    fi
}

row() { # engine, µs, baseline µs
    awk -v e="$1" -v t="$2" -v b="$3" 'BEGIN { printf "| %s | %.2f | %.1f |\n", e, t, t / b }'
}

bash "$EDDY_ROOT/scripts/guests/js.sh" tools
bash "$EDDY_ROOT/scripts/guests/python.sh" tools >/dev/null

# The benchmark beside the plugin's own logic module.
mkdir -p "$work/js" "$work/python"
cp "$HERE/js/index.js" "$EDDY_ROOT/plugins/fraud-enrich-js/transaction.js" "$work/js/"
cp "$HERE/python/"*.py "$EDDY_ROOT/plugins/fraud-enrich-python/transaction.py" "$work/python/"

(cd "$work/js" && "$TOOLS/js/node_modules/.bin/componentize-qjs" --wit "$EDDY_ROOT/wit" \
    --world processor --js index.js --module-root . --sync -o "$work/qjs.wasm" >/dev/null)
bash "$EDDY_ROOT/scripts/guests/python.sh" build "$work/python" "$work/python.wasm" >/dev/null
if ((spidermonkey)); then
    SM="$TOOLS/js-spidermonkey"
    if [[ ! -f "$SM/node_modules/@bytecodealliance/componentize-js/package.json" ]]; then
        npm install --prefix "$SM" --no-audit --no-fund --ignore-scripts --save-exact \
            "@bytecodealliance/componentize-js@$SM_VERSION" >&2
    fi
    if [[ ! -x "$TOOLS/weval/bin/weval" ]]; then
        cargo install -q "weval@$WEVAL_VERSION" --locked --root "$TOOLS/weval"
    fi
    cjs=(node "$SM/node_modules/@bytecodealliance/componentize-js/src/cli.js" index.js
        --wit "$EDDY_ROOT/wit" -n processor -d http fetch-event)
    (cd "$work/js" && "${cjs[@]}" -o "$work/sm.wasm" >/dev/null)
    (cd "$work/js" && "${cjs[@]}" --aot --weval-bin "$TOOLS/weval/bin/weval" -o "$work/sm-aot.wasm" >/dev/null)
fi

# The whole plugins, built as the guest scripts build them, where the languages benchmark
# finds them (`-- --one`: one run of one component through the worker, 10,000 keys).
PLUGINS="${EDDY_PLUGIN_TARGET_DIR:-$HOME/.cache/eddy/plugins-target}/guests"
bash "$EDDY_ROOT/scripts/guests/js.sh" build "$EDDY_ROOT/plugins/fraud-enrich-js" \
    "$PLUGINS/fraud-enrich-js.wasm" >/dev/null
bash "$EDDY_ROOT/scripts/guests/python.sh" build "$EDDY_ROOT/plugins/fraud-enrich-python" \
    "$PLUGINS/fraud-enrich-python.wasm" >/dev/null
(cd "$EDDY_ROOT" && cargo bench -q --profile dev -p eddy-tests --bench languages --no-run 2>/dev/null)
# µs per event of the whole fraud-enrich plugin in language $1 (20,000 events, 256 a call).
whole_plugin() {
    local out
    out="$(cd "$EDDY_ROOT" && cargo bench -q --profile dev -p eddy-tests --bench languages -- \
        --one fraud-enrich "$1" packed 20000 2>/dev/null)"
    if [[ "$out" =~ ([0-9]+)\ events\ in\ ([0-9.]+)\ s ]]; then
        awk -v n="${BASH_REMATCH[1]}" -v s="${BASH_REMATCH[2]}" 'BEGIN { printf "%.2f", s * 1e6 / n }'
    else
        echo "run.sh: the $1 plugin did not report a rate: $out" >&2
        exit 1
    fi
}

# Every figure is taken before the table is printed: a run that reports none stops the script
# here (set -e) instead of printing an empty row.
node_us="$(node -e "import('$work/js/index.js').then((m) => console.log(m.bench()))")"
python_us="$(python3 "$work/python/logic.py" | sed -E 's/logic: ([0-9.]+) us.*/\1/')"
qjs_us="$(in_component "$work/qjs.wasm")"
cpython_us="$(in_component "$work/python.wasm")"
if ((spidermonkey)); then
    sm_us="$(in_component "$work/sm.wasm")"
    sm_aot_us="$(in_component "$work/sm-aot.wasm")"
fi

echo
echo "fraud-enrich's logic per event, no host calls (20,000 events after 2,000 to warm up)"
echo
echo "| engine | µs per event | vs native |"
echo "|---|---:|---:|"
row "node $(node --version) (native, JIT): baseline" "$node_us" "$node_us"
row "QuickJS (componentize-qjs, the project's JS engine)" "$qjs_us" "$node_us"
if ((spidermonkey)); then
    row "SpiderMonkey (componentize-js $SM_VERSION)" "$sm_us" "$node_us"
    row "SpiderMonkey + weval AOT (componentize-js $SM_VERSION)" "$sm_aot_us" "$node_us"
fi
row "python3 $(python3 -c 'import platform; print(platform.python_version())') (native): baseline" "$python_us" "$python_us"
row "CPython (componentize-py, the project's Python engine)" "$cpython_us" "$python_us"

# The whole plugin against its engine's floor, three rounds, each the floor then the plugin one
# after the other (the machine's speed moves between minutes): the round with the median ratio,
# and the lowest and highest ratio.
declare -A floor_wasm=([js]="$work/qjs.wasm" [python]="$work/python.wasm")
rows=()
for lang in js python; do
    rounds=""
    for _ in 1 2 3; do
        floor="$(in_component "${floor_wasm[$lang]}")"
        whole="$(whole_plugin "$lang")"
        rounds+="$(awk -v f="$floor" -v w="$whole" 'BEGIN { printf "%.4f %s %s", w / f, f, w }')"$'\n'
    done
    sorted="$(printf '%s' "$rounds" | sort -g)"
    read -r _ f w <<<"$(sed -n 2p <<<"$sorted")"
    lo="$(head -n1 <<<"$sorted" | cut -d' ' -f1)"
    hi="$(tail -n1 <<<"$sorted" | cut -d' ' -f1)"
    rows+=("$(awk -v l="$lang" -v f="$f" -v w="$w" -v lo="$lo" -v hi="$hi" \
        'BEGIN { printf "| fraud-enrich-%s | %.2f | %.2f | %.2f | %.2f..%.2f |", l, f, w, w / f, lo, hi }')")
done
echo
echo "the whole fraud-enrich plugin (layer, bindings, host calls) against its engine's floor above"
echo
echo "| plugin | floor, µs per event | plugin, µs per event | plugin / floor | lowest..highest |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
