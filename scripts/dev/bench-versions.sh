#!/usr/bin/env bash
# Runs one benchmark of this repository at two revisions, one after the other on this machine,
# and prints both outputs: to show that a change meant to leave speed alone did.
#
#   scripts/dev/bench-versions.sh OLD_REV NEW_REV [BENCH] [-- ARGS]   (default: engine -- --quick)
set -euo pipefail
source "$(dirname "$0")/../env.sh"
old="${1:?old revision}"; new="${2:?new revision}"; bench="${3:-engine}"
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
args=("$@"); [ ${#args[@]} -eq 0 ] && args=(--quick)
work="$(mktemp -d)"
trap 'for w in "$work"/*; do git -C "$EDDY_ROOT" worktree remove --force "$w" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for rev in "$old" "$new"; do
  git -C "$EDDY_ROOT" worktree add --detach --quiet "$work/$rev" "$rev"
  say "building $rev"
  (cd "$work/$rev" && cargo bench --profile dev -p eddy-tests --bench "$bench" --no-run --quiet 2>&1 | grep -v '^warning' || true)
done
for rev in "$old" "$new"; do
  say "$bench at $rev ($(git -C "$work/$rev" rev-parse --short HEAD))"
  (cd "$work/$rev" && cargo bench --profile dev -p eddy-tests --bench "$bench" --quiet -- "${args[@]}" 2>/dev/null)
done
