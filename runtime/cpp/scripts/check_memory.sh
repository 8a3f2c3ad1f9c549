#!/usr/bin/env bash
# Memory checks of the C++ runtime on a real bundle:
#   1. the C++ tests in an AddressSanitizer + UndefinedBehaviorSanitizer build (LeakSanitizer on);
#   2. the kidrr_search example in that build (leaks are errors);
#   3. the release example under valgrind (definite/indirect leaks and memory errors are errors).
# Usage: check_memory.sh BUNDLE GALLERY(.npz|.npy) [FEATURE_SIZE]
# A tampered copy of BUNDLE is made in a temporary folder for the hash-check test.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/../.." && pwd)
bundle=${1:?usage: check_memory.sh BUNDLE GALLERY [FEATURE_SIZE]}
gallery=${2:?usage: check_memory.sh BUNDLE GALLERY [FEATURE_SIZE]}
fsize=${3:-$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]+'/manifest.json'))['model']['feature_size'])" "$bundle")}
headers="$root/build/cpp-ort-headers"
json_headers="$root/build/cpp-json-headers"

for kind in asan release; do
  dir="$root/build/cpp/$kind"
  if [[ ! -f "$dir/CMakeCache.txt" ]]; then
    flags=(-DCMAKE_BUILD_TYPE=Release)
    [[ $kind == asan ]] && flags=(-DCMAKE_BUILD_TYPE=Debug -DKIDRR_SANITIZE=ON)
    cmake -S "$here" -B "$dir" -DKIDRR_ORT_HEADERS_DIR="$headers" -DKIDRR_JSON_HEADERS_DIR="$json_headers" "${flags[@]}" >/dev/null
  fi
  cmake --build "$dir" --parallel 2 >/dev/null
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$bundle" "$tmp/tampered"
printf '\0' >> "$tmp/tampered/similarity.onnx"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== ASan+UBSan: kidrr_tests"
"$root/build/cpp/asan/kidrr_tests" "$bundle" "$tmp/tampered" "$fsize"
echo "== ASan+UBSan+LSan: kidrr_search (exact, then two-stage)"
"$root/build/cpp/asan/kidrr_search" "$bundle" "$gallery" "a dog runs on the grass"
"$root/build/cpp/asan/kidrr_search" "$bundle" "$gallery" "a dog runs on the grass" -k 2 --shortlist 3
if command -v valgrind >/dev/null; then
  echo "== valgrind: kidrr_search (release build)"
  valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=9 \
    --suppressions="$here/scripts/valgrind-ort.supp" \
    "$root/build/cpp/release/kidrr_search" "$bundle" "$gallery" "a dog runs on the grass"
else
  echo "== valgrind not installed: skipped"
fi
echo "memory checks passed"
