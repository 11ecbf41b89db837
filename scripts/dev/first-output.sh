#!/usr/bin/env bash
# Time from `eddy new plugin` to the first output on NATS, per language, with `eddy dev`
# (it builds the project, starts its own nats-server, creates the streams and runs it), and
# the edit-test round (`build.sh` after a line added to the source, then `eddy test --expect`).
# Usage: scripts/dev/first-output.sh [lang...]   (default: rust js python go c)
set -euo pipefail
source "$(dirname "$0")/../env.sh"
eddy="$CARGO_TARGET_DIR/debug/eddy"
langs=("$@"); [ ${#langs[@]} -gt 0 ] || langs=(rust js python go c)
work="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# As a plugin author has it: the installed guest files, no checkout, each project building
# into its own target directory.
export EDDY_SHARE="$work/share"
bash "$EDDY_ROOT/scripts/install-share.sh" "$EDDY_SHARE" >/dev/null
unset EDDY_ROOT CARGO_TARGET_DIR
printf '%-8s %22s %24s\n' lang "new to first output, s" "edit + build + test, s"
for lang in "${langs[@]}"; do
  name="first-$lang"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  start=$(date +%s.%N)
  "$eddy" new plugin --lang "$lang" "$name" --dir "$work" >/dev/null
  dir="$work/$name"
  sed -i "s|nats://127.0.0.1:4222|nats://127.0.0.1:$port|" "$dir/pipeline.toml"
  "$eddy" dev "$dir" >"$work/$lang.out" 2>"$work/$lang.err" &
  dev=$!
  until grep -q "^running $name" "$work/$lang.out"; do
    kill -0 $dev 2>/dev/null || { echo "$lang: eddy dev ended:"; cat "$work/$lang.err"; exit 1; }
    sleep 0.1
  done
  "$eddy" publish -p "$dir" "$name.in" --file "$dir/events.jsonl" >/dev/null
  until grep -q "^out " "$work/$lang.out"; do sleep 0.05; done
  first=$(echo "$(date +%s.%N) - $start" | bc)
  kill -TERM $dev; wait $dev || true
  # The edit-test round: a changed source file, its build, and `eddy test --expect`.
  src="$( (ls "$dir"/src/lib.rs "$dir"/*.js "$dir"/*.py "$dir"/*.go "$dir"/*.c 2>/dev/null || true) | head -n 1)"
  start=$(date +%s.%N)
  case "$src" in *.py) echo "# an edit" >>"$src" ;; *) echo "// an edit" >>"$src" ;; esac
  (cd "$dir" && ./build.sh >/dev/null 2>&1 && "$eddy" test "$name.wasm" events.jsonl --expect expected.jsonl >/dev/null 2>&1)
  round=$(echo "$(date +%s.%N) - $start" | bc)
  printf '%-8s %22.1f %24.1f\n' "$lang" "$first" "$round"
done
