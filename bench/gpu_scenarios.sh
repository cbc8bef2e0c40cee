#!/bin/bash
# On the lent GPU machine: record the GPU sessions and run the GPU benchmarks into $OUT.
#   source .gpu/on_device.sh; bash bench/gpu_scenarios.sh single|tp2|bench
# single: healthy, KV pressure, start-up OOM, run-time OOM on GPU 0 (Llama-3-8B shapes, dummy weights)
# tp2:    tensor parallel 2 on two GPUs, with the NVML sampler benchmark running alongside
# bench:  recording overhead on the GPU (interleaved with/without kvscope)
set -u
OUT=${OUT:-/tmp/out}
MODEL=/tmp/llama8b
[ -f $MODEL/config.json ] || python3 bench/gpu_model.py $MODEL .gpu/tokenizer
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip -e failed"
W="python3 tests/workload.py $MODEL --load-format dummy --blocks 0"
rec() { local name=$1; shift; timeout ${TMO:-300} python3 -m profiler.cli record --session $OUT/$name.kvscope -- "$@" > $OUT/$name.log 2>&1; echo "$name exit=$?"; tail -3 $OUT/$name.log; }
fin() { python3 -c "import sys,sqlite3
for p in sys.argv[1:]:
    c=sqlite3.connect(p); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.execute('PRAGMA journal_mode=DELETE'); c.execute('VACUUM'); c.close()" $OUT/*.kvscope; }
case ${1:-single} in
single)
  export CUDA_VISIBLE_DEVICES=0
  rec gpu_healthy $W --engine llmengine --gpu-memory-utilization 0.85 --max-model-len 8192 --requests 512 --prefixes 4 --prefix-len 2000 --max-tokens 128 --max-num-seqs 256 --arrivals-per-step 8 --counts $OUT/gpu_healthy_counts.json
  rec gpu_kv_pressure $W --engine llmengine --blocks 600 --gpu-memory-utilization 0.85 --max-model-len 8192 --requests 512 --prefixes 4 --prefix-len 2000 --max-tokens 128 --max-num-seqs 256 --counts $OUT/gpu_pressure_counts.json
  TMO=200 rec gpu_oom_startup $W --engine llmengine --gpu-memory-utilization 0.08 --max-model-len 8192 --requests 8
  TMO=240 rec gpu_oom_runtime $W --engine llmengine --gpu-memory-utilization 0.85 --max-model-len 16384 --requests 8 --prefixes 8 --prefix-len 15000 --max-tokens 8 --prompt-logprobs 5 --max-num-batched-tokens 16384 --hog-leave-gib 0.5
  pkill -f HOG_READY; fin ;;
tp2)
  (sleep 60; python3 bench/bench_nvml.py --interval-ms 20 --duration-s 15 > $OUT/nvml_bench.json 2>&1) &
  rec gpu_tp2 $W --engine llmengine --tp 2 --gpu-memory-utilization 0.85 --max-model-len 8192 --requests 512 --prefixes 4 --prefix-len 2000 --max-tokens 128 --max-num-seqs 256 --arrivals-per-step 8 --counts $OUT/gpu_tp2_counts.json
  wait; cat $OUT/nvml_bench.json; fin ;;
bench)
  export CUDA_VISIBLE_DEVICES=0
  timeout 560 python3 bench/bench_overhead.py $MODEL --pairs 8 --json $OUT/overhead_gpu.json --load-format dummy --blocks 0 --gpu-memory-utilization 0.42 --max-model-len 4096 --requests 512 --prefixes 4 --prefix-len 1000 --max-tokens 128 --max-num-seqs 256 ;;
esac
# the device returns at most 8 files: pack logs and JSON into one archive
(cd $OUT && tar czf logs_${1:-single}.tgz --remove-files $(ls *.log *.json 2>/dev/null))
ls -la $OUT
