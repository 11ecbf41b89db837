#!/usr/bin/env bash
# Runs one benchmark of this repository at two revisions on this machine, alternating between
# them for a few rounds, and prints every output: to show that a change meant to leave speed
# alone did. Each revision builds in a target directory of its own, with its own sample
# plugins (the WIT may differ between them): cargo names a workspace crate's build output
# the same wherever the checkout is, so a shared target directory would hand one revision's
# crates to the other. RocksDB's library comes from the usual dev build when there is one.
#
#   scripts/dev/bench-versions.sh OLD_REV NEW_REV [BENCH] [-- ARGS]
#   (default: engine -- --quick; a bare `--` runs the full benchmark)
#   ROUNDS=N (default 2): how many times each revision runs, in turn.
set -euo pipefail
source "$(dirname "$0")/../env.sh"
old="${1:?old revision}"; new="${2:?new revision}"; bench="${3:-engine}"
shift $(( $# < 3 ? $# : 3 ))
args=(--quick)
if [ "${1:-}" = "--" ]; then shift; args=("$@"); fi
rounds="${ROUNDS:-2}"
root="$HOME/.cache/eddy/bench-versions"
reuse_rocksdb_build
work="$(mktemp -d)"
trap 'for w in "$work"/*; do git -C "$EDDY_ROOT" worktree remove --force "$w" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for rev in "$old" "$new"; do
  git -C "$EDDY_ROOT" worktree add --detach --quiet "$work/$rev" "$rev"
  id="$(git -C "$work/$rev" rev-parse --short HEAD)"
  say "building $rev"
  (cd "$work/$rev" && CARGO_TARGET_DIR="$root/$id/target" \
    cargo bench --profile dev -p eddy-tests --bench "$bench" --no-run --quiet 2>&1 | grep -v '^warning' || true)
done
for round in $(seq "$rounds"); do
  for rev in "$old" "$new"; do
    id="$(git -C "$work/$rev" rev-parse --short HEAD)"
    say "$bench at $rev ($id), round $round of $rounds"
    (cd "$work/$rev" && CARGO_TARGET_DIR="$root/$id/target" EDDY_PLUGIN_TARGET_DIR="$root/$id/plugins" \
      cargo bench --profile dev -p eddy-tests --bench "$bench" --quiet -- ${args[@]+"${args[@]}"} 2>/dev/null)
  done
done
