#!/bin/bash
# Build the vLLM bundle for the lent GPU machine, for one or more vLLM releases, in pieces that each
# fit one device call:
#   bench/gpu/build_bundle.sh [VERSION ...]          (default 0.26.0; e.g. 0.26.0 0.23.0 0.20.2)
#   PIECE_MIB=50 bench/gpu/build_bundle.sh ...       (piece size; project tree + piece <= 64 MiB)
# The GPU image has Python 3.12, torch 2.11.0+cu130, transformers, numpy, pandas, nvidia-ml-py;
# vLLM 0.20-0.26 pin torch==2.11.0 and are built for CUDA 13, so they match it.
#
# Layers: `base` holds the wheels two of the requested releases pin at the same version, one layer per
# release holds vLLM itself (slimmed: no FlashAttention 2, which Hopper does not use, no Rust
# front-end binary, no FlashMLA, cp312 builds only, and the GPU code of every architecture but
# sm_9x blanked inside the fatbins by bench/gpu/slim_fatbin.py) and the wheels that differ. Each
# layer is one tar.xz; the layers are concatenated (base first, releases in the order given) and
# split into pieces (named by their offset). DEST/manifest says where each layer lies in that stream, so on the machine
# (bench/gpu/on_device.sh) a layer is unpacked as soon as the pieces holding it have arrived.
# Requirements per release: bench/gpu/requirements-VERSION.txt (made by resolve_requirements.py
# when missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
dest=${DEST:-$root/.gpu}
cache=${KVSCOPE_GPU_CACHE:-/tmp/kvscope-gpu-bundle}
piece=${PIECE_MIB:-48}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(0.26.0)
mkdir -p "$dest" "$cache/wheels" "$cache/layers"
PLAT=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

for v in "${versions[@]}"; do
  req=$here/requirements-$v.txt
  [ -s "$req" ] || python3 "$here/resolve_requirements.py" "$v" > "$req"
  echo "downloading wheels for vLLM $v ..." >&2
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d "$cache/wheels" -r "$req" 2>&1 | grep -v "^WARNING: Location" >&2 || true
done

# the wheel file of a pin "name==version"
wheel_of() {
  local n=${1%%==*} ver=${1##*==}
  n=$(echo "$n" | tr 'A-Z-.' 'a-z__')
  ls "$cache"/wheels/* | awk -v n="$n" -v ver="$ver" '{f=$0; sub(".*/", "", f); split(f, p, "-");
    nm=tolower(p[1]); gsub(/[-.]/, "_", nm); if (nm == n && p[2] == ver) print $0}' | head -1
}

# build one layer from a list of pins (stdin) unless it is cached
build_layer() {
  local name=$1 list
  list=$(cat)
  local key
  key=$(echo "$list" | sha256sum | cut -c1-12)
  local out=$cache/layers/$name-$key.tar.xz
  if [ ! -f "$out" ]; then
    echo "layer $name: $(echo "$list" | wc -l) wheels ..." >&2
    local site=$cache/site-$name
    rm -rf "$site" && mkdir -p "$site"
    while read -r pin; do
      [ -n "$pin" ] || continue
      w=$(wheel_of "$pin"); [ -n "$w" ] || { echo "no wheel for $pin" >&2; exit 1; }
      python3 -m zipfile -e "$w" "$site"
    done <<< "$list"
    if [ -d "$site/vllm" ]; then
      rm -f "$site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$site/vllm/vllm-rs" "$site/vllm/_flashmla_C.abi3.so"
      find "$site/vllm" -name '*.abi3.so' ! -name '_vllm_fa3_C.abi3.so' -print0 |
        xargs -0 -n1 python3 "$here/slim_fatbin.py" --keep-major 9 >&2
    fi
    find "$site" -name '*.cpython-3[0-9]*-x86_64-linux-gnu.so' ! -name '*cpython-312*' -delete
    find "$site" -name '*.a' -delete  # static libraries (xgrammar's 70 MB) serve builds, not imports
    find "$site" -name __pycache__ -type d -prune -exec rm -rf {} +
    echo "compressing layer $name ($(du -sm "$site" | cut -f1) MiB) ..." >&2
    (cd "$site" && tar -cf - . | xz -T2 -4 > "$out.tmp") && mv "$out.tmp" "$out"
    rm -rf "$site"
  fi
  echo "$out"
}

# base: every pin that two of the releases share (all of them when one is asked for); a release's
# own layer comes first on its PYTHONPATH, so its own pin of a package shadows base's
common=$(for v in "${versions[@]}"; do grep -v '^vllm==' "$here/requirements-$v.txt"; done |
         sort | uniq -c | awk -v n=${#versions[@]} '$1 >= (n > 1 ? 2 : 1) {print $2}')
layers=("base:$(echo "$common" | build_layer base)")
for v in "${versions[@]}"; do
  own=$(grep -vxF -f <(echo "$common") "$here/requirements-$v.txt")
  layers+=("vllm-$v:$(echo "$own" | build_layer "vllm-$v")")
done

rm -rf "$dest"/part_* "$dest/manifest"
offset=0
for l in "${layers[@]}"; do
  name=${l%%:*} file=${l#*:}
  size=$(stat -c %s "$file")
  echo "$name $offset $size" >> "$dest/manifest"
  offset=$((offset + size))
done
for l in "${layers[@]}"; do cat "${l#*:}"; done > "$cache/stream"
# pieces are named by their byte offset in the stream: the rest can be split again at another size
# between calls (PIECE_MIB=40 bench/gpu/split_stream.py ... FROM_OFFSET) without breaking the order
python3 "$here/split_stream.py" "$cache/stream" "$dest" "$piece"
mkdir -p "$dest/run"
cp "$here/on_device.sh" "$dest/run/"
cp "$dest/manifest" "$dest/run/"
cp -r "$here/tokenizer" "$dest/run/"
cat "$dest/manifest" >&2
ls -la "$dest" >&2
echo "pieces: $(ls "$dest"/part_* | wc -l) of ${piece} MiB; carry each in its own device call (bench/gpu/README.md)" >&2
