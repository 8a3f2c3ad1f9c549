#!/usr/bin/env bash
# Fetch nlohmann-json (header-only) from Debian's nlohmann-json3-dev into a build folder.
#
# Usage: fetch_json_headers.sh OUT_DIR [SUITE]
#   OUT_DIR/include/nlohmann/json.hpp ...   the headers (nothing else is kept)
# Exit codes (from debian_fetch.sh): 3 = no apt tools / no Debian mirror, 4 = registry unreachable.
set -euo pipefail

out=${1:?usage: fetch_json_headers.sh OUT_DIR [SUITE]}
suite=${2:-${KIDRR_DEBIAN_SUITE:-bookworm}}
inc="$out/include/nlohmann"
if [[ -f "$inc/json.hpp" ]]; then
  echo "fetch_json_headers: headers already in $inc"; exit 0
fi
bash "$(dirname "$0")/debian_fetch.sh" "$out" "$suite" nlohmann-json3-dev
out=$(cd "$out" && pwd)
[[ -f "$out/root/usr/include/nlohmann/json.hpp" ]] || { echo "fetch_json_headers: nlohmann-json3-dev holds no json.hpp" >&2; exit 4; }
mkdir -p "$out/include"
cp "$out/root/SOURCE_PACKAGES" "$out/root/usr/include/nlohmann/SOURCE_PACKAGE"
rm -rf "$inc" && mv "$out/root/usr/include/nlohmann" "$inc"
rm -rf "$out/root"
echo "fetch_json_headers: nlohmann-json -> $inc"
