#!/bin/bash
# On the GPU machine, from the repository root there:  source .gpu/run/on_device.sh [VERSION]
# Appends the carried bundle piece(s) to the stream, unpacks every layer whose bytes have all
# arrived (manifest: "layer offset length"), and, with VERSION, exports the environment that runs
# that vLLM release: PYTHONPATH = kvscope's code (.gpu/run/wt when carried, else the tree) +
# /tmp/kvscope-gpu/vllm-VERSION + /tmp/kvscope-gpu/base.
G=/tmp/kvscope-gpu
mkdir -p $G/layers
mkdir -p $G/pieces
for p in .gpu/part_*; do  # pieces are named by their offset in the stream
  [ -f "$p" ] && [ ! -f "$G/got_$(basename $p)" ] && cp "$p" $G/pieces/ && touch "$G/got_$(basename $p)"
done
while :; do
  have=$(stat -c %s $G/stream 2>/dev/null || echo 0)
  next=$G/pieces/$(printf 'part_%010d' "$have")
  [ -f "$next" ] || break
  cat "$next" >> $G/stream && rm "$next"
done
have=$(stat -c %s $G/stream 2>/dev/null || echo 0)
while read -r layer off len; do
  [ -n "$layer" ] || continue
  if [ ! -f "$G/layers/$layer.done" ] && [ $((off + len)) -le "$have" ]; then
    mkdir -p "$G/$layer"
    if tail -c +$((off + 1)) $G/stream | head -c "$len" | xz -d -T0 | tar -xf - -C "$G/$layer"; then
      touch "$G/layers/$layer.done"; echo "unpacked $layer"
    else
      echo "FAILED to unpack $layer"
    fi
  fi
done < .gpu/run/manifest
echo "stream $have bytes; layers ready: $(ls $G/layers | sed 's/.done//' | tr '\n' ' ')"
if [ -n "${1:-}" ]; then
  code=$PWD; [ -d .gpu/run/wt ] && code=$PWD/.gpu/run/wt
  export PYTHONPATH=$code:$G/vllm-$1:$G/base
  export VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KVSCOPE_CODE=$code
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  [ -f "$G/layers/vllm-$1.done" ] || echo "vLLM $1 is not unpacked yet"
fi
