#!/usr/bin/env bash
# Fuzzes the parsers that take bytes Eddy does not control, each target for SECONDS_EACH
# (default 300), corpora kept under fuzz/corpus/<target>/ and seeded from the examples:
# - the host's and the Rust SDK's (fuzz/fuzz_targets/, cargo-fuzz on nightly; installs
#   cargo-fuzz if missing);
# - the other guest layers' decoders, each with its own language's fuzzer: c_json (libFuzzer,
#   guest-sdk/c/test/json_fuzz.c), go_json and go_map_keys (Go's native fuzzing,
#   guest-sdk/go/eddy/internal/codec/fuzz_test.go), python_layer (atheris,
#   guest-sdk/python/test/fuzz_layer.py). The JavaScript layer has none: docs/ARCHITECTURE.md
#   says why.
# A crash leaves its input under fuzz/artifacts/<target>/ (Go: the SDK's testdata/fuzz/).
#
#   scripts/dev/fuzz.sh                  every target, 300 s each
#   SECONDS_EACH=60 scripts/dev/fuzz.sh event_key bulk_line c_json
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh

rust_targets=(event_key bulk_line stored_values pipeline_config query manifest control map_keys)
guest_targets=(c_json go_json go_map_keys python_layer)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${rust_targets[@]}" "${guest_targets[@]}")
fi
seconds="${SECONDS_EACH:-300}"
corpus=fuzz/corpus

# Runs a guest layer's target; the Rust ones go through cargo-fuzz below.
guest() {
    case "$1" in
        c_json) bash scripts/guests/c.sh fuzz "$corpus/c_json" "$seconds" ;;
        go_json) bash scripts/guests/go.sh fuzz FuzzJSON "$seconds" ;;
        go_map_keys) bash scripts/guests/go.sh fuzz FuzzMapKeys "$seconds" ;;
        python_layer) bash scripts/guests/python.sh fuzz "$corpus/python_layer" "$seconds" ;;
        *) return 2 ;;
    esac
}
mkdir -p "$corpus"/{c_json,python_layer}
printf '{"customer":"c-42","amount":12.5,"tags":["a",null,true],"n":-0,"big":18446744073709551616}' > "$corpus/c_json/seed-1"
printf '{"customer":"c-42","amount_cents":1250,"merchant":{"id":"m-1"}}' > "$corpus/python_layer/seed-1"
printf '[NaN, 1e999, -Infinity, 007, "\\ud800"]' > "$corpus/python_layer/seed-2"

needs_cargo_fuzz=0
for t in "${targets[@]}"; do
    case " ${guest_targets[*]} " in *" $t "*) ;; *) needs_cargo_fuzz=1 ;; esac
done
if [ "$needs_cargo_fuzz" = 1 ] && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

# The fuzz build has its own target directory (nightly, instrumented) but reuses RocksDB's C++
# library from the dev build when there is one: it is not what is fuzzed, and it takes the
# longest to build.
reuse_rocksdb_build
export CARGO_TARGET_DIR="${EDDY_FUZZ_TARGET_DIR:-$HOME/.cache/eddy/fuzz-target}"

# The same dependency versions as the workspace.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock

mkdir -p "$corpus"/{event_key,bulk_line,stored_values,pipeline_config,query,manifest,control,map_keys}
printf '/customer\n{"customer":"c-42","amount":12.5}' > "$corpus/event_key/seed-1"
printf '/a~1b/0\n{"a/b":[7,{"x":null}]}' > "$corpus/event_key/seed-2"
printf '{"key": "c-42", "value": {"tier": "gold"}}' > "$corpus/bulk_line/seed-1"
printf '{"key": "c-42", "map_key": "tx-1", "value": 1250, "written_ms": 1764755000000, "ttl_ms": 86400000}' > "$corpus/bulk_line/seed-2"
printf 'key,map_key,value\nc-1,tx-1,"{""a"":1}"\n' > "$corpus/bulk_line/seed-3"
printf '\x00\x00\x01\x90\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01{"a":1}' > "$corpus/stored_values/seed-1"
printf '\x00{"state":"stats","key":"c-1"}' > "$corpus/query/seed-1"
printf '\x01{"state":"seen","key":"c-7","prefix":"tx-0","limit":3,"start_after":"tx-01"}' > "$corpus/query/seed-2"
printf '\x03{"broadcast_map":"rules","limit":2}' > "$corpus/query/seed-3"
printf '\x02{"state":"recent","key_base64":"Yy0z"}' > "$corpus/query/seed-4"
printf '{"format":1,"id":3,"pipeline":"fraud","created_ms":1764755000000,"key_groups":128,"positions":{"TXN":120},"done_after":{"TXN":[122]},"plugin_version":"ab12","outputs":119,"files":[{"name":"000009.sst","stored":"shared/000009-4f2a.sst","size":1024,"sha256":"00ff"},{"name":"MANIFEST-000005","stored":"chk-0000000003/files/MANIFEST-000005","size":80,"sha256":"11ee"}],"total_bytes":1104,"new_bytes":80,"cut_ms":2,"complete_ms":40}' > "$corpus/manifest/seed-1"
printf '\x01\x00\x00\x80\xff\xff\xff\x7f\x00' > "$corpus/map_keys/seed-1"
printf '{"name":"before-v2","dir":"/var/lib/eddy/savepoints","progress":"eddy.progress.1"}' > "$corpus/control/seed-1"
for f in examples/*/pipeline.toml; do
    cp "$f" "$corpus/pipeline_config/$(basename "$(dirname "$f")").toml"
done

status=0
for t in "${targets[@]}"; do
    echo "==> fuzzing $t for $seconds s"
    case " ${guest_targets[*]} " in
        *" $t "*)
            if ! guest "$t"; then
                echo "FAILED: $t"
                status=1
            fi
            continue
            ;;
    esac
    if ! cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none --debug-assertions "$t" \
        "$corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1; then
        echo "FAILED: $t (input under fuzz/artifacts/$t/)"
        status=1
    fi
done
exit $status
