#!/usr/bin/env bash
# Fetch Eigen (header-only linear algebra: the kernels' GEMM) from Debian's libeigen3-dev into a build folder.
#
# Usage: fetch_eigen_headers.sh OUT_DIR [SUITE]
#   OUT_DIR/include/eigen3/Eigen/Core ...   the headers (nothing else is kept)
# Exit codes (from debian_fetch.sh): 3 = no apt tools / no Debian mirror, 4 = registry unreachable.
set -euo pipefail

out=${1:?usage: fetch_eigen_headers.sh OUT_DIR [SUITE]}
suite=${2:-${KIDRR_DEBIAN_SUITE:-bookworm}}
inc="$out/include/eigen3"
if [[ -f "$inc/Eigen/Core" ]]; then
  echo "fetch_eigen_headers: headers already in $inc"; exit 0
fi
bash "$(dirname "$0")/debian_fetch.sh" "$out" "$suite" libeigen3-dev
out=$(cd "$out" && pwd)
[[ -f "$out/root/usr/include/eigen3/Eigen/Core" ]] || { echo "fetch_eigen_headers: libeigen3-dev holds no Eigen/Core" >&2; exit 4; }
mkdir -p "$out/include"
cp "$out/root/SOURCE_PACKAGES" "$out/root/usr/include/eigen3/SOURCE_PACKAGE"
rm -rf "$inc" && mv "$out/root/usr/include/eigen3" "$inc"
rm -rf "$out/root"
echo "fetch_eigen_headers: Eigen -> $inc"
