#!/usr/bin/env bash
# Installs what plugin projects made by `eddy new` build against into one folder, so they
# need no Eddy checkout: the guest SDKs, language layers and templates (`guest-sdk/`), the
# WIT contract (`wit/`), the scripts that build the other languages (`scripts/`), and a
# Cargo workspace file that gives the Rust SDK the versions it inherits.
# Usage: scripts/install-share.sh [folder]   (default: $EDDY_SHARE or ~/.local/share/eddy)
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${EDDY_SHARE:-$HOME/.local/share/eddy}}"
mkdir -p "$(dirname "$dest")"
# Built beside the old copy and swapped in whole: a project never sees half an install.
tmp="$(mktemp -d "$dest.new.XXXXXX")"
mkdir -p "$tmp/scripts"
cp -r "$src/guest-sdk" "$src/wit" "$tmp/"
cp -r "$src/scripts/guests" "$tmp/scripts/"
cp "$src/scripts/env.sh" "$tmp/scripts/"
# The Rust SDK inherits its version, edition and dependency versions from a workspace: this
# one has the SDK alone, with the checkout's shared settings (local path dependencies left out).
{
  printf '[workspace]\nresolver = "3"\nmembers = ["guest-sdk"]\n\n'
  awk '/^\[workspace\.(package|dependencies|lints)/ { keep = 1 }
       /^\[profile/ { keep = 0 }
       keep && !/path *=/' "$src/Cargo.toml"
} > "$tmp/Cargo.toml"
rm -rf "$dest.old"
[ -e "$dest" ] && mv "$dest" "$dest.old"
mv "$tmp" "$dest"
rm -rf "$dest.old"
echo "$dest"
