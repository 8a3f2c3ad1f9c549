#!/usr/bin/env bash
# Run the libFuzzer harnesses (runtime/cpp/fuzz) under ASan + UBSan for a time budget each.
#
# Usage: fuzz.sh [SECONDS_EACH=150] [HARNESS...]     harnesses: manifest vocab wordpiece npy npz gallery gallery2 kernels
#   builds build/cpp/fuzz with clang fetched by fetch_clang.sh (nothing installed),
#   grows a working corpus in build/cpp/fuzz-corpus/<harness> from the seeds in fuzz/corpus/<harness>,
#   writes crashing inputs to build/cpp/fuzz-findings/<harness>-crash-*,
#   prints one line per harness: executions, seconds, corpus size, findings. Exit 1 if any finding.
# Reproduce a finding: build/cpp/fuzz/fuzz_<harness> build/cpp/fuzz-findings/<file>
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-150}
shift || true
harnesses=("$@")
((${#harnesses[@]})) || harnesses=(manifest vocab wordpiece npy npz gallery gallery2 kernels)

cxx=$(bash "$here/scripts/fetch_clang.sh" "$root/build/cpp-clang" | tail -n1)
bash "$here/scripts/fetch_json_headers.sh" "$root/build/cpp-json-headers" >/dev/null
dir="$root/build/cpp/fuzz"
if [[ ! -f "$dir/CMakeCache.txt" ]]; then
  cmake -S "$here" -B "$dir" -DKIDRR_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="${cxx%++}" \
        -DKIDRR_JSON_HEADERS_DIR="$root/build/cpp-json-headers" >/dev/null
fi
cmake --build "$dir" --parallel 2 >/dev/null

findings_dir="$root/build/cpp/fuzz-findings"
mkdir -p "$findings_dir"
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for h in "${harnesses[@]}"; do
  corpus="$root/build/cpp/fuzz-corpus/$h"
  mkdir -p "$corpus"
  log="$findings_dir/$h.log"
  before=$(ls "$findings_dir" | grep -c "^$h-" || true)
  # Seeds are read-only inputs; new interesting inputs go to the working corpus (first folder).
  if "$dir/fuzz_$h" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
       -artifact_prefix="$findings_dir/$h-" "$corpus" "$here/fuzz/corpus/$h" >"$log" 2>&1; then rc=0; else rc=$?; fi
  after=$(ls "$findings_dir" | grep -c "^$h-" || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)
  printf 'fuzz_%-8s %12s runs in %5ss, corpus %5d files, new findings %d (exit %d; log %s)\n' \
    "$h" "${runs:-?}" "${secs:-?}" "$(ls "$corpus" | wc -l)" "$((after - before))" "$rc" "$log"
  if ((rc != 0 || after > before)); then status=1; grep -m3 -E "ERROR|runtime error|SUMMARY" "$log" || true; fi
done
exit $status
