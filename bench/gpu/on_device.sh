#!/usr/bin/env bash
# Device-side half of bench/gpu/prepare_wheels.sh: gather the carried parts, then unpack DALI into /tmp/site.
#
#     bash bench/gpu/on_device.sh stash .whl/call1     # calls 1..N-1: keep this call's part in /tmp/hnp-wheels
#     bash bench/gpu/on_device.sh install .whl/callN   # last call: keep it, join all parts, check, unpack, import
#     export PYTHONPATH=/tmp/site
#
# Parts go to /tmp/hnp-wheels, which lasts as long as the machine stays warm between calls; each step lists
# the parts still missing, so a machine given back in between (its /tmp gone) shows at once.
set -euo pipefail

STASH=${STASH:-/tmp/hnp-wheels}
SITE=${SITE:-/tmp/site}
ARCHIVE=site.tar.xz

stash() {
    local from=$1
    [ -f "$from/PARTS" ] || { echo "on_device.sh: $from has no PARTS list: is it a .whl/callK folder?" >&2; exit 2; }
    mkdir -p "$STASH"
    cp "$from"/* "$STASH/"
    local missing=()
    while read -r part; do
        [ -f "$STASH/$part" ] || missing+=("$part")
    done <"$STASH/PARTS"
    echo "stashed $(ls "$from" | grep part- | tr '\n' ' ')in $STASH; parts still missing: ${missing[*]:-none}"
    [ ${#missing[@]} -eq 0 ]
}

install() {
    stash "$1" || { echo "on_device.sh: cannot install before every part has arrived" >&2; exit 3; }
    (cd "$STASH" && xargs cat <PARTS >"$ARCHIVE" && sha256sum -c SHA256SUMS)
    rm -rf "$SITE"
    mkdir -p "$SITE"
    python3 - "$STASH/$ARCHIVE" "$SITE" <<'PY'
import sys
import tarfile

with tarfile.open(sys.argv[1], "r:xz") as archive:  # Python's lzma: no xz binary needed there
    archive.extractall(sys.argv[2], filter="data")
PY
    # nvImageCodec's wheel makes nvidia/ a regular package: first on sys.path, it would hide the machine's own
    # nvidia.* packages (cudnn, cublas, ...). Extend its path to theirs, the way pkgutil namespace packages do.
    echo '__path__ = __import__("pkgutil").extend_path(__path__, __name__)' >"$SITE/nvidia/__init__.py"
    PYTHONPATH=$SITE python3 -c 'import nvidia.dali as dali; print("DALI", dali.__version__, "imports from", dali.__file__)'
}

case "${1:-}" in
    stash) stash "${2:?usage: on_device.sh stash .whl/callK}" || true ;;
    install) install "${2:?usage: on_device.sh install .whl/callN}" ;;
    *) echo "usage: on_device.sh stash|install .whl/callK" >&2; exit 2 ;;
esac
