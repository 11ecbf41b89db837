#!/usr/bin/env bash
# The test command: installs what is missing, builds the plugins and the host, and runs every
# test against real nats-server processes the tests start themselves.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$EDDY_ROOT"

ensure_tools
prune_target
bash scripts/build-plugins.sh
# The sample plugins in the other guest languages (each script installs its pinned toolchain
# into ~/.cache/eddy/tools once). A language that cannot build here is reported and its tests
# skip with the reason, unless EDDY_REQUIRE_LANGUAGES is set (CI sets it).
for lang in js python go c; do
  say "building the $lang plugins"
  bash "scripts/guests/$lang.sh" || say "$lang plugins did not build: their tests will say why"
done
say "testing the Go layer's JSON codec against encoding/json"
bash scripts/guests/go.sh test
say "testing the Python layer's JSON shortcuts against the standard library"
bash scripts/guests/python.sh test
say "testing the C layer's JSON code natively, under AddressSanitizer and UBSan"
bash scripts/guests/c.sh test
say "building"
cargo build --workspace --bins --tests
say "testing"
# --no-fail-fast: every test binary runs, and every failure is listed at the end.
status=0
cargo test --workspace --no-fail-fast -- --skip cluster:: "$@" || status=$?
say "testing the cluster, alone on the machine"
# Each cluster test runs three nats-servers and three or four hosts with 3 s leases: beside
# the other tests on two cores their lease renewals starve, and the hosts fence themselves
# and move partitions for reasons no production host would see. They run one at a time,
# after the rest (every test name with `cluster::`, the unit tests of the cluster modules too).
cargo test --workspace --tests --no-fail-fast -- cluster:: --test-threads=1 "$@" || status=$?
exit "$status"
