#!/usr/bin/env bash
# Builds the Debian package: target/debian/lifeboat_<version>_amd64.deb.
#   scripts/package.sh                 release build, then the package
#   scripts/package.sh --binary FILE   package FILE instead of building (the
#                                      tests package the binary they built)
#   scripts/package.sh --install-tool  only install the pinned cargo-deb
# Other arguments go to cargo-deb (e.g. --output DIR, --fast). The
# completions and man pages are made by the binary itself, so they match it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$cargo_deb_version"; then
  echo "installing cargo-deb $cargo_deb_version…" >&2
  cargo install cargo-deb --locked --version "$cargo_deb_version" --quiet
fi
[ "${1:-}" = --install-tool ] && exit 0

binary=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

target=${CARGO_TARGET_DIR:-target}
if [ -z "$binary" ]; then
  cargo build --release --locked
else
  install -D -m 0755 "$binary" "$target/release/lifeboat"
fi
bin="$target/release/lifeboat"
out="$target/release/package"
rm -rf "$out"
mkdir -p "$out/completions" "$out/man"
"$bin" completions bash > "$out/completions/lifeboat.bash"
"$bin" completions zsh > "$out/completions/_lifeboat"
"$bin" completions fish > "$out/completions/lifeboat.fish"
"$bin" man --out "$out/man" >/dev/null
# Debian policy: man pages gzipped, without a time stamp (-n) so the
# package is the same whenever it is built.
gzip -9n "$out"/man/*.1

cargo deb --no-build --locked "${args[@]}"
