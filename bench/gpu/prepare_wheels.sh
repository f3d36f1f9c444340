#!/usr/bin/env bash
# Download the wheels bench/gpu_throughput.py needs on the GPU machine and pack them for the device calls.
#
#     bash bench/gpu/prepare_wheels.sh          # -> .whl/call1 ... .whl/callN (git-ignored), sizes printed
#     CALL_MIB=50 bash bench/gpu/prepare_wheels.sh    # smaller parts, when the working tree has grown
#
# The GPU machine (Python 3.12, x86-64, CUDA 13.0 driver) has torch, timm, opencv, pandas, pyarrow, scikit-learn,
# pyyaml and tqdm, but no DALI and no internet, and one device call carries at most 64 MiB. So:
#   1. download DALI and what it requires that the machine lacks, as cp312 manylinux wheels (the versions
#      installed in this venv; nvidia-nvjpeg at the CUDA 13.0 release, which `mixed` decode loads through
#      nvImageCodec);
#   2. install them here with `pip install --target` for Python 3.12, the tree the machine's /tmp/site becomes,
#      dropping extension modules built for other Python versions (Python 3.12 loads only *.cpython-312-*.so);
#   3. pack that tree as one tar.xz (176 MiB against 256 MiB of wheels for DALI 2.4.0: three calls, not five)
#      and cut it with `split -b` into parts of at most CALL_MIB MiB (default 59; the working tree travels
#      with each part and must fit in the rest of the 64), one per folder .whl/callK, each with SHA256SUMS and
#      the list of all parts (PARTS).
# bench/gpu/on_device.sh joins the parts with `cat`, checks the sha256 and unpacks the tree into /tmp/site.
# BENCHMARKS.md ("GPU throughput") gives the exact sequence of device calls.
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
CALL_MIB=${CALL_MIB:-59}
DEST=.whl
DOWNLOADS=$DEST/download
SITE=$DEST/site
ARCHIVE=site.tar.xz
NVJPEG_VERSION=13.0.1.86
# DALI's Requires-Dist (and nvImageCodec's [all] extra) minus what the GPU image has (numpy, packaging, six,
# pyyaml, typing-extensions, wheel).
PACKAGES=(nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13 nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13
          astunparse gast libcst makefun nvtx optree)
TARGET_FLAGS=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
              --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
              --platform manylinux1_x86_64)

installed_version() {
    "$PYTHON" -c 'import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))' "$1"
}

mib() {
    printf '%.1f' "$(echo "$1 / 1048576" | bc -l)"
}

rm -rf "$DOWNLOADS" "$SITE" "$DEST"/call* "$DEST/$ARCHIVE"
mkdir -p "$DOWNLOADS"
specs=("nvidia-nvjpeg==$NVJPEG_VERSION")
for name in "${PACKAGES[@]}"; do
    specs+=("$name==$(installed_version "$name")")
done
echo "download: ${specs[*]}"
"$PYTHON" -m pip download -q --no-deps "${TARGET_FLAGS[@]}" -d "$DOWNLOADS" "${specs[@]}" 2>&1 | grep -v 'is ignored' || true
echo "requirements of the DALI wheel (each is downloaded above or already on the GPU machine):"
unzip -p "$DOWNLOADS"/nvidia_dali_cuda130-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true

"$PYTHON" -m pip install -q --no-deps --no-compile "${TARGET_FLAGS[@]}" --target "$SITE" "$DOWNLOADS"/*.whl \
    2>&1 | grep -v 'is ignored' || true
find "$SITE" -name '*.cpython-3*.so' ! -name '*.cpython-312-*' -delete
rm -rf "$SITE/bin"  # console scripts with this machine's interpreter path; the benchmark needs none

echo "packing $(du -sh "$SITE" | cut -f1) into $DEST/$ARCHIVE (xz, one thread: a few minutes)"
tar -C "$SITE" -cf - . | nice xz -6 -T1 >"$DEST/$ARCHIVE"
split -b "${CALL_MIB}m" "$DEST/$ARCHIVE" "$DEST/$ARCHIVE.part-"
parts=("$DEST/$ARCHIVE".part-*)
(cd "$DEST" && sha256sum "$ARCHIVE") >"$DEST/SHA256SUMS"
for k in "${!parts[@]}"; do
    call=$DEST/call$((k + 1))
    mkdir -p "$call"
    mv "${parts[$k]}" "$call/"
    cp "$DEST/SHA256SUMS" "$call/"
    printf '%s\n' "${parts[@]##*/}" >"$call/PARTS"
done

echo
echo "wheels (MiB, as downloaded):"
for wheel in "$DOWNLOADS"/*.whl; do
    printf '  %7s  %s\n' "$(mib "$(stat -c %s "$wheel")")" "$(basename "$wheel")"
done
echo "  total $(mib "$(cat "$DOWNLOADS"/*.whl | wc -c)") MiB; installed tree $(du -sh "$SITE" | cut -f1);" \
     "$ARCHIVE $(mib "$(stat -c %s "$DEST/$ARCHIVE")") MiB"
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "device calls (carry one folder each, in order; the working tree adds $(mib "$tree") MiB to each):"
for k in "${!parts[@]}"; do
    call=$DEST/call$((k + 1))
    printf '  %-11s %6s MiB  %s\n' "$call" "$(mib "$(du -cb "$call"/* | tail -1 | cut -f1)")" "$(ls "$call" | tr '\n' ' ')"
done
