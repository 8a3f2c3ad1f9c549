#!/usr/bin/env bash
# Fetch clang 14 with its sanitizer and libFuzzer runtimes from Debian into a build folder, for the
# fuzzing harnesses (runtime/cpp/fuzz). Nothing is installed system-wide.
#
# Usage: fetch_clang.sh OUT_DIR [SUITE]    prints the path of clang++ on its last line
#   OUT_DIR/root/usr/lib/llvm-14/bin/clang++   the compiler; it finds its headers and runtimes
#                                               (lib/clang/14.*/) next to itself
# Needs libclang-cpp14 and libLLVM-14 on the machine (the clang binary links them).
# Exit codes: 3 = no apt tools / no Debian mirror, 4 = registry unreachable, 5 = clang does not run.
set -euo pipefail

out=${1:?usage: fetch_clang.sh OUT_DIR [SUITE]}
suite=${2:-${KIDRR_DEBIAN_SUITE:-bookworm}}
cxx="$out/root/usr/lib/llvm-14/bin/clang++"
if [[ ! -x "$cxx" ]] || ! ls "$out"/root/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  bash "$(dirname "$0")/debian_fetch.sh" "$out" "$suite" clang-14 libclang-common-14-dev libclang-rt-14-dev >&2
fi
out=$(cd "$out" && pwd)
cxx="$out/root/usr/lib/llvm-14/bin/clang++"
if ! "$cxx" --version >/dev/null 2>&1; then
  echo "fetch_clang: $cxx does not run (is libclang-cpp14 installed?): $("$cxx" --version 2>&1 | head -n2)" >&2
  exit 5
fi
echo "$cxx"
