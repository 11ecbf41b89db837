#!/usr/bin/env bash
# Times an incremental `cargo build --workspace --bins --tests` after a one-line change in the
# run loop and in the state module, for two revisions of this repository, one after the
# other in one script (so the machine and the dependency cache are the same), and sums the
# size of the executables each build links.
#
#   scripts/dev/build-times.sh OLD_REV NEW_REV
#
# Each revision is checked out in a temporary worktree and built once to warm the cache;
# the shared CARGO_TARGET_DIR keeps the dependencies (RocksDB, wasmtime) built once.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
old="${1:?old revision}"; new="${2:?new revision}"
work="$(mktemp -d)"
trap 'for w in "$work"/*; do git -C "$EDDY_ROOT" worktree remove --force "$w" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# The file holding the run loop, and one in the state module, at a revision.
run_loop_file() { [ -e "$1/host/src/pipeline/runner/mod.rs" ] && echo "$1/host/src/pipeline/runner/mod.rs" || echo "$1/host/src/pipeline/runner.rs"; }
state_file() { [ -e "$1/host/crates/state/src/lib.rs" ] && echo "$1/host/crates/state/src/lib.rs" || echo "$1/host/src/state/mod.rs"; }

build() { (cd "$1" && cargo build --workspace --bins --tests --quiet 2>&1 | grep -v '^warning' || true); }
timed() { local t0 t1; t0=$(date +%s.%N); build "$1" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
exe_bytes() {
  (cd "$1" && cargo build --workspace --bins --tests --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys,os
total=0; n=0
for line in sys.stdin:
    m=json.loads(line)
    if m.get("reason")=="compiler-artifact" and m.get("executable"):
        total+=os.path.getsize(m["executable"]); n+=1
print(f"{n} {total/1e6:.0f}")'
}

printf '%-10s %-9s %14s %14s %6s %12s\n' rev commit "run loop s" "state s" exes "exe MB"
for rev in "$old" "$new"; do
  dir="$work/$rev"
  git -C "$EDDY_ROOT" worktree add --detach --quiet "$dir" "$rev"
  say "warming $rev"
  build "$dir" >/dev/null
  rl="$(run_loop_file "$dir")"; st="$(state_file "$dir")"
  echo "// touched" >> "$rl"; t_rl=$(timed "$dir")
  echo "// touched" >> "$st"; t_st=$(timed "$dir")
  read -r n mb < <(exe_bytes "$dir")
  printf '%-10s %-9s %14.1f %14.1f %6s %12s\n' "$rev" "$(git -C "$dir" rev-parse --short HEAD)" "$t_rl" "$t_st" "$n" "$mb"
done
