#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers from Debian's libonnxruntime-dev (trixie) into a build folder.
#
# Usage: fetch_ort_headers.sh OUT_DIR [SUITE]
#   OUT_DIR/include/onnxruntime/*.h   the headers (nothing else is kept)
#   OUT_DIR/apt/                      private apt state, cache and sources list (safe to delete)
# Exit codes (from debian_fetch.sh): 3 = no apt tools / no Debian mirror, 4 = registry unreachable.
#
# Why this way: bookworm has no libonnxruntime-dev and no PyPI package ships the headers.
# debian_fetch.sh downloads the package with a private apt state and unpacks it (nothing installed).
set -euo pipefail

out=${1:?usage: fetch_ort_headers.sh OUT_DIR [SUITE]}
suite=${2:-${KIDRR_ORT_HEADERS_SUITE:-trixie}}
inc="$out/include/onnxruntime"
if [[ -f "$inc/onnxruntime_c_api.h" ]]; then
  echo "fetch_ort_headers: headers already in $inc"; exit 0
fi
bash "$(dirname "$0")/debian_fetch.sh" "$out" "$suite" libonnxruntime-dev
out=$(cd "$out" && pwd)
src=$(dirname "$(find "$out/root" -name onnxruntime_c_api.h | head -n1)")
[[ -f "$src/onnxruntime_c_api.h" ]] || { echo "fetch_ort_headers: libonnxruntime-dev holds no onnxruntime_c_api.h" >&2; exit 4; }
mkdir -p "$(dirname "$inc")"
staging=$(mktemp -d "$out/.inc.XXXXXX")
find "$src" -maxdepth 1 -name '*.h' -exec cp {} "$staging/" \;
cp "$out/root/SOURCE_PACKAGES" "$staging/SOURCE_PACKAGE"
rm -rf "$inc" && mv "$staging" "$inc"   # appear all at once
rm -rf "$out/root"
echo "fetch_ort_headers: $(ls "$inc" | wc -l) files -> $inc"
