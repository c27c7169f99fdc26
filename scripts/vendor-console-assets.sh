#!/usr/bin/env bash
# Refresh the console's vendored assets from the npm registry (see
# cloud_hub/console/static/README.md):   scripts/vendor-console-assets.sh [UPLOT_VERSION]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
version=${1:-1.6.32}
target=cloud_hub/console/static/uplot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null && tar xzf "uplot-$version.tgz")
mkdir -p "$target"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$target/"
echo "uplot@$version copied to $target:"
sha256sum "$target"/*
