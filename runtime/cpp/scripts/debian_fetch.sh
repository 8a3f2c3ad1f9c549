#!/usr/bin/env bash
# Download Debian packages with a private apt configuration and unpack them into a build folder.
#
# Usage: debian_fetch.sh OUT_DIR SUITE PACKAGE...
#   OUT_DIR/root/...   the packages' files, unpacked with dpkg-deb -x (nothing is installed)
#   OUT_DIR/apt/       private apt state, cache and sources list (safe to delete)
# Exit codes: 3 = no apt tools or no Debian mirror configured, 4 = the registry could not be reached.
#
# Why this way: the C++ build needs a few Debian files (ONNX Runtime headers from trixie, clang and
# its sanitizer/fuzzer runtimes, nlohmann-json) that a fresh machine lacks, and must not install
# anything system-wide. We reuse the Debian mirror the machine's own apt sources name (read at run
# time, so no host is written in the repo), choose only the suite, and keep apt's state private so
# the system's lists are untouched: `apt-get download` + `dpkg-deb -x`.
set -euo pipefail

out=${1:?usage: debian_fetch.sh OUT_DIR SUITE PACKAGE...}
suite=${2:?usage: debian_fetch.sh OUT_DIR SUITE PACKAGE...}
shift 2
(($#)) || { echo "debian_fetch: no package named" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)   # apt resolves relative Dir:: paths against /etc/apt
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "debian_fetch: $tool not found; this script needs Debian's apt tools" >&2; exit 3; }
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
  echo "debian_fetch: no Debian mirror found in /etc/apt/sources.list*; add one or unpack the packages into $out/root by hand" >&2
  exit 3
fi
keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
echo "debian_fetch: $* from suite $suite at $mirror (the system's apt sources)"

apt_root="$out/apt"
mkdir -p "$apt_root"/{state/lists/partial,cache/archives/partial,etc/preferences.d,etc/apt.conf.d,etc/sources.list.d,download}
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

if ! apt-get "${opts[@]}" -qq update; then
  echo "debian_fetch: apt-get update of $suite at $mirror failed (registry unreachable?)" >&2; exit 4
fi
rm -f "$apt_root"/download/*.deb
(cd "$apt_root/download" && apt-get "${opts[@]}" -qq download "$@") || {
  echo "debian_fetch: apt-get download $* from $suite failed" >&2; exit 4; }

# Unpack into a staging folder, then move it in place: a half-unpacked root never appears.
staging=$(mktemp -d "$out/.root.XXXXXX")
trap 'rm -rf "$staging"' EXIT
for deb in "$apt_root"/download/*.deb; do
  dpkg-deb -x "$deb" "$staging"
  basename "$deb" >> "$staging/SOURCE_PACKAGES"
done
rm -rf "$out/root" && mv "$staging" "$out/root"
trap - EXIT
echo "debian_fetch: unpacked $(wc -l < "$out/root/SOURCE_PACKAGES") package(s) into $out/root"
