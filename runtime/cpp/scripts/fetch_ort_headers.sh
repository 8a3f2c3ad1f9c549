#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers from Debian's libonnxruntime-dev (trixie) into a build folder.
#
# Usage: fetch_ort_headers.sh OUT_DIR [SUITE]
#   OUT_DIR/include/onnxruntime/*.h   the headers (nothing else is kept)
#   OUT_DIR/apt/                      private apt state, cache and sources list (safe to delete)
#
# Why this way: bookworm has no libonnxruntime-dev and no PyPI package ships the headers. We reuse
# the Debian mirror the machine's own apt sources name (read at run time, so no host is written in
# the repo), change only the suite, and keep apt's state private so the system's lists are untouched.
# Nothing is installed: `apt-get download` + `dpkg-deb -x`, then only the headers are kept.
set -euo pipefail

out=${1:?usage: fetch_ort_headers.sh OUT_DIR [SUITE]}
mkdir -p "$out" && out=$(cd "$out" && pwd)   # apt resolves relative Dir:: paths against /etc/apt
suite=${2:-${KIDRR_ORT_HEADERS_SUITE:-trixie}}
pkg=libonnxruntime-dev
inc="$out/include/onnxruntime"

if [[ -f "$inc/onnxruntime_c_api.h" ]]; then
  echo "fetch_ort_headers: headers already in $inc"; exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "fetch_ort_headers: $tool not found; this script needs Debian's apt tools" >&2; exit 3; }
done

# The first Debian archive (not -security, not a third-party repo) named by the system's sources,
# in either the deb822 (.sources) or the one-line (.list) format. Prints "URI KEYRING".
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk 'BEGIN{RS=""; IGNORECASE=1}
      { uri=""; key=""; suites=""; types="";
        n=split($0, lines, "\n");
        for (i=1;i<=n;i++) { l=lines[i]; if (l ~ /^#/) continue;
          if (l ~ /^URIs:/)      { sub(/^URIs:[ \t]*/, "", l);      split(l, u, /[ \t]+/); uri=u[1] }
          if (l ~ /^Suites:/)    { sub(/^Suites:[ \t]*/, "", l);    suites=l }
          if (l ~ /^Types:/)     { sub(/^Types:[ \t]*/, "", l);     types=l }
          if (l ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", l); key=l } }
        if (types ~ /(^| )deb( |$)/ && uri ~ /\/debian\/?$/ && suites !~ /security/) { print uri, key; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    # "deb [opts] URI suite comps": take the URI of the first plain Debian line.
    sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\/debian\/\?\)[[:space:]]\+[a-z]\+[[:space:]].*/\2 /p' "$f"
  done
}
read -r mirror keyring < <(find_mirror | head -n1) || true
if [[ -z "${mirror:-}" ]]; then
  echo "fetch_ort_headers: no Debian mirror found in /etc/apt/sources.list*; add one or copy the headers into $inc by hand" >&2
  exit 3
fi
keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
echo "fetch_ort_headers: using mirror $mirror, suite $suite (from the system's apt sources)"

apt_root="$out/apt"
mkdir -p "$apt_root"/{state/lists/partial,cache/archives/partial,etc/preferences.d,etc/apt.conf.d,download}
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" > "$apt_root/etc/sources.list"
: > "$apt_root/state/status"
opts=(-o "Dir::Etc::SourceList=$apt_root/etc/sources.list"
      -o "Dir::Etc::SourceParts=$apt_root/etc/sources.list.d"
      -o "Dir::Etc::Preferences=$apt_root/etc/preferences"
      -o "Dir::Etc::PreferencesParts=$apt_root/etc/preferences.d"
      -o "Dir::State=$apt_root/state"
      -o "Dir::State::status=$apt_root/state/status"
      -o "Dir::Cache=$apt_root/cache"
      -o "APT::Sandbox::User=$(id -un)"
      -o "Debug::NoLocking=1"
      -o "Acquire::Languages=none"
      -o "APT::Get::List-Cleanup=0")
mkdir -p "$apt_root/etc/sources.list.d"

if ! apt-get "${opts[@]}" -qq update; then
  echo "fetch_ort_headers: apt-get update of $suite at $mirror failed (registry unreachable?)" >&2; exit 4
fi
(cd "$apt_root/download" && apt-get "${opts[@]}" -qq download "$pkg") || {
  echo "fetch_ort_headers: apt-get download $pkg from $suite failed" >&2; exit 4; }
deb=$(ls "$apt_root"/download/${pkg}_*.deb | head -n1)

tmp=$(mktemp -d "$out/.unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
src=$(dirname "$(find "$tmp" -name onnxruntime_c_api.h | head -n1)")
[[ -n "$src" && -f "$src/onnxruntime_c_api.h" ]] || { echo "fetch_ort_headers: $deb holds no onnxruntime_c_api.h" >&2; exit 4; }
mkdir -p "$(dirname "$inc")"
staging=$(mktemp -d "$out/.inc.XXXXXX")
find "$src" -maxdepth 1 -name '*.h' -exec cp {} "$staging/" \;
basename "$deb" > "$staging/SOURCE_PACKAGE"
rm -rf "$inc" && mv "$staging" "$inc"   # appear all at once
echo "fetch_ort_headers: $(ls "$inc" | wc -l) files from $(basename "$deb") -> $inc"
