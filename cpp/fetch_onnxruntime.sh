#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers without touching the system's apt state.
#
# PyPI's onnxruntime wheel ships libonnxruntime.so.1.N but no headers, and Debian bookworm has no
# ONNX Runtime package; Debian trixie's libonnxruntime-dev has the headers. apt runs with a private
# sources list and private state/cache folders, so the machine's own apt configuration and package
# database are left as they are; the package is unpacked with dpkg-deb -x, never installed.
#
# Usage: cpp/fetch_onnxruntime.sh [DEST]   (default: cpp/third_party/onnxruntime)
# Prints the include folder to pass as -DONNXRUNTIME_INCLUDE_DIR=... on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/third_party/onnxruntime}"
suite="${DAVID_ORT_SUITE:-trixie}"
mirror="${DAVID_ORT_MIRROR:-http://deb.debian.org/debian}"
include="$dest/usr/include/onnxruntime"

if [ -f "$include/onnxruntime_cxx_api.h" ]; then
    echo "$include"
    exit 0
fi

state="$(mktemp -d)"
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/unpacked"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" > "$state/sources.list"
apt_private=(
    -o "APT::Sandbox::User=$(id -un)"  # no drop to _apt, which cannot write the private folders
    -o "Dir::Etc::SourceList=$state/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$state/lists"
    -o "Dir::Cache=$state/cache"
    -o "Dir::State::Status=/dev/null"
    -o "Debug::NoLocking=1"
)
apt-get "${apt_private[@]}" -qq update >&2
(cd "$state" && apt-get "${apt_private[@]}" -qq download libonnxruntime-dev >&2)
deb="$(ls "$state"/libonnxruntime-dev_*.deb)"
echo "fetched $(basename "$deb")" >&2
dpkg-deb -x "$deb" "$state/unpacked"
if [ ! -f "$state/unpacked/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
    echo "error: $(basename "$deb") has no onnxruntime_cxx_api.h under usr/include/onnxruntime" >&2
    exit 1
fi
# Unpacked aside and moved in whole, so an interrupted run never leaves headers that look complete.
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "error: $dest exists and holds other files; remove it or give another folder" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
rmdir "$dest" 2>/dev/null || true
mv "$state/unpacked" "$dest"
echo "$include"
