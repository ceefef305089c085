#!/usr/bin/env bash
# Builds the Debian package target/debian/lbmanager_<version>_amd64.deb with cargo-deb (installed
# when missing, like the other scripts install what they need). Install it with
#   apt install ./target/debian/lbmanager_*.deb
#
#   scripts/package.sh                       # release build, then the package
#   scripts/package.sh --no-build            # package the release binary already built
#   scripts/package.sh --profile dev --no-build --output DIR
#                                            # package the debug binary `cargo test` built, into
#                                            # DIR (the test suite does this: one build per CI run,
#                                            # and target/debian keeps only real packages)
#
# The man pages and shell completions come from the binary being packaged (`lbmanager manpages`,
# `lbmanager completions`), so they never disagree with its --help. What goes where is
# [package.metadata.deb] in Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=yes
output=
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        --no-build) build=no; shift ;;
        --output) output=$2; shift 2 ;;
        *) echo "usage: $0 [--profile PROFILE] [--no-build] [--output DIR]" >&2; exit 2 ;;
    esac
done

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "[package] cargo-deb missing -> cargo install cargo-deb --locked" >&2
    cargo install cargo-deb --locked --version '^3'
fi

if [ "$build" = yes ]; then
    cargo build --locked --profile "$profile" --bin lbmanager
fi
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
case $profile in
    dev) bin=$target_dir/debug/lbmanager ;;
    *) bin=$target_dir/$profile/lbmanager ;;
esac
[ -x "$bin" ] || { echo "[package] no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }

# Generated assets (Cargo.toml names them under target/package/).
assets=target/package
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$bin" manpages "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/lbmanager.bash"
"$bin" completions zsh >"$assets/completions/_lbmanager"
"$bin" completions fish >"$assets/completions/lbmanager.fish"
# The licence's full text (Cargo.toml says MIT), for the copyright file.
cat >"$assets/LICENSE" <<'LICENSE'
Copyright (c) 2026 lbmanager developers

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
LICENSE

out=${output:-$target_dir/debian}
mkdir -p "$out"
cargo deb --locked --no-build --profile "$profile" --quiet --output "$out"
