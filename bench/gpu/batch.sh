#!/bin/bash
# On the lent GPU machine, from the repository root there (see bench/gpu/README.md):
#   bash .gpu/run/wt/bench/gpu/batch.sh TASK [TASK ...]
# TASK: compat:VERSION  the compatibility checks (record/report/diagnosis/attach/KV events) on that vLLM
#       offload          vLLM 0.26.0, KV offloading to CPU: recorded engine run + attached server
#       spec             vLLM 0.26.0, EAGLE speculative decoding and the same work without it
#       probe:VERSION    import that vLLM and print the GPU (no engine)
#       configs:A,B      the configs branch's bench/gpu_configs.py scenarios A and B (vLLM 0.26.0)
#       oomforecast      the live branch's bench/gpu_oom_forecast.py (torch only)
#       setup            vLLM 0.26.0's environment: pip install -e, model configs (before parallel tasks)
#       dp2:moe|dense    bench/gpu_dp2.py: DP=2 server recorded per rank (both GPUs): the tiny Mixtral
#                        (DPEngineCoreProc) or Llama-3-8B shapes (dummy weights), --enforce-eager
#       spec:eagle       the EAGLE half of spec only
#       multinode        tests/support/multinode.py (TP=2 over --nnodes 2) and multinode_dp.py (DP=2,
#                        a headless node), one GPU per node rank, the tiny Llama, vLLM 0.26.0
#       multinode:tp     multinode.py only; multinode:plain the same two nodes without kvscope
#                        (MN_GPUS: multinode.py --gpus, 0,1 or 0,1/1,0)
#       offload13:MODE   bench/gpu_offload.py's engine (max_num_seqs 64) for issue 13: plain (no
#                        kvscope), vllmopts (no kvscope, vLLM's KV events + kv_cache_metrics on as
#                        kvscope turns them on), kvscope (kvscope record --kv-events --kv-cache-metrics)
# Two task lists can run side by side, one per GPU: CUDA_VISIBLE_DEVICES=0 bash batch.sh A & \
#   CUDA_VISIBLE_DEVICES=1 bash batch.sh B; gpu_clean then ends leftovers of its own GPU only.
# offload uses the kv branch's bench/gpu_offload.py when the tree has it.
# Each task's files go to $OUT/TASK/ and are packed into $OUT/TASK.tgz (':' and ',' read '-'; the
# device returns at most 8 files). *_TIMEOUT_S variables bound each part.
set -u
OUT=${OUT:-/tmp/out}
here=$(cd "$(dirname "$0")" && pwd)
code=$(cd "$here/../.." && pwd)
model=/tmp/llama8b
eagle=/tmp/eagle-llama3-8b
root=$PWD
S() { pushd "$root" > /dev/null; source .gpu/run/on_device.sh "$1" > /dev/null; popd > /dev/null; }
cd "$code"  # `python -m` puts the working directory first on sys.path: kvscope's code, not the tree's

setup() {
  [ -f $model/config.json ] || python3 "$code/bench/gpu_model.py" $model "$root/.gpu/run/tokenizer"
  [ -f $eagle/config.json ] || python3 "$code/bench/gpu/eagle_config.py" $eagle
  if [ ! -f /tmp/kvscope-installed ]; then
    python3 -m pip install -q --no-deps --no-build-isolation -e "$code" > /tmp/pip-e.log 2>&1 \
      && touch /tmp/kvscope-installed || { echo "pip -e failed"; tail -5 /tmp/pip-e.log; }
  fi
}

finalize() {  # fold WAL into the file so it opens read-only, and make it small
  python3 -c "import sqlite3,sys
for p in sys.argv[1:]:
    c=sqlite3.connect(p); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.execute('PRAGMA journal_mode=DELETE'); c.execute('VACUUM'); c.close()" "$@"
}

rec() {  # rec NAME DIR -- COMMAND...: kvscope record, then report --json
  local name=$1 dir=$2; shift 3
  timeout ${RUN_TIMEOUT_S:-240} python3 -m profiler.cli record --session $dir/$name.kvscope -- "$@" > $dir/$name.log 2>&1
  echo "$name: exit $?"; grep -E "ENGINE_RUN_DONE|KV_CONNECTOR_TOTALS|Error|error" $dir/$name.log | tail -4 | cut -c1-1500
  gpu_clean
  finalize $dir/$name.kvscope
  python3 -m profiler.cli report --json $dir/$name.kvscope > $dir/$name.report.json 2> $dir/$name.report.err
  echo "$name report: exit $? $(head -c 300 $dir/$name.report.err)"
}

gpu_clean() {  # an engine killed by a timeout can leave its workers holding the GPU: end them by pid
  local sel=""; [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && sel="-i $CUDA_VISIBLE_DEVICES"
  for pid in $(nvidia-smi $sel --query-compute-apps=pid --format=csv,noheader 2>/dev/null); do
    echo "ending leftover GPU process $pid"; kill -9 "$pid" 2>/dev/null
  done
}

task() {
  local t=$1 n
  n=$(echo "$t" | tr ':,' '--')
  local dir=$OUT/$n
  mkdir -p $dir
  case $t in
    probe:*)
      S ${t#probe:}
      python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" ;;
    compat:*)  # compat:VERSION or compat:VERSION:record / :attach (one half)
      local v=${t#compat:} only=""
      case $v in *:*) only="--only ${v#*:}"; v=${v%%:*};; esac
      S $v; setup
      timeout ${COMPAT_TIMEOUT_S:-300} python3 "$code/bench/gpu/compat_gpu.py" $model $dir/work --json $dir/compat.json $only ;;
    offload)
      S 0.26.0; setup
      if [ -f "$code/bench/gpu_offload.py" ]; then  # the recorder's own GPU scenario (branch kv)
        timeout ${OFFLOAD_TIMEOUT_S:-400} python3 "$code/bench/gpu_offload.py" $model $dir ${OFFLOAD_ARGS:-} > $dir/gpu_offload.log 2>&1
        echo "gpu_offload.py: exit $?"; grep -E "DONE|recorded|Traceback|Error" $dir/gpu_offload.log | tail -6 | cut -c1-2500
        gpu_clean; finalize $dir/*.kvscope
      else
      rec gpu_h200_offload $dir -- python3 "$code/bench/gpu/engine_run.py" $model --workload tiers \
        --engine-args '{"num_gpu_blocks_override": 700, "kv_offloading_size": 8, "kv_offloading_backend": "native", "kv_cache_metrics": true}' \
        --counts $dir/offload_counts.json --raw $dir/scheduler_stats_offload_vllm026.json
      timeout ${SERVER_TIMEOUT_S:-180} python3 "$code/bench/gpu/offload_server.py" $model $dir \
        --metrics-name metrics_offload_vllm026.txt > $dir/offload_server.log 2>&1
      echo "offload server: exit $?"; grep -E "OFFLOAD_SERVER|ATTACH_FAILED|Error" $dir/offload_server.log | tail -3 | cut -c1-2500
      finalize $dir/gpu_h200_offload_attach.kvscope 2>/dev/null
      fi ;;
    configs:*)  # the configs branch's GPU scenarios: configs:spec_base,spec_eagle
      S 0.26.0; setup
      timeout ${CONFIGS_TIMEOUT_S:-400} python3 "$code/bench/gpu_configs.py" --out $dir --timeout-s ${CONFIGS_RUN_TIMEOUT_S:-200} \
        --only $(echo ${t#configs:} | tr ',' ' ') > /tmp/gpu_configs.log 2>&1  # it empties $dir at the end
      echo "gpu_configs.py: exit $?"; grep -vE "^\(|INFO|WARNING|^$" /tmp/gpu_configs.log | tail -12 | cut -c1-1500
      cp /tmp/gpu_configs.log $dir/ ;;
    oomforecast)  # the live branch's OOM forecast check (torch only, no vLLM)
      S 0.26.0; setup
      timeout ${OOM_TIMEOUT_S:-150} python3 "$code/bench/gpu_oom_forecast.py" $dir/gpu_h200_oom_forecast.kvscope > $dir/oom_forecast.log 2>&1
      echo "gpu_oom_forecast.py: exit $?"; tail -3 $dir/oom_forecast.log | cut -c1-1500
      gpu_clean; finalize $dir/gpu_h200_oom_forecast.kvscope ;;
    spec)
      S 0.26.0; setup
      rec gpu_h200_spec_eagle $dir -- python3 "$code/bench/gpu/engine_run.py" $model --workload spec \
        --engine-args "{\"speculative_config\": {\"method\": \"eagle\", \"model\": \"$eagle\", \"num_speculative_tokens\": 3}}" \
        --counts $dir/spec_eagle_counts.json --raw $dir/spec_eagle_raw.json --max-tokens 64 --prefix-len 3000
      rec gpu_h200_spec_off $dir -- python3 "$code/bench/gpu/engine_run.py" $model --workload spec \
        --counts $dir/spec_off_counts.json --max-tokens 64 --prefix-len 3000 ;;
    setup)
      S 0.26.0; setup; ls $model ;;
    dp2:*)
      S 0.26.0; setup
      local args
      if [ "${t#dp2:}" = moe ]; then args="$dir --tiny-mixtral --dtype bfloat16 --enforce-eager"
      else args="$model $dir --load-format=dummy --enforce-eager"; fi
      timeout ${DP2_TIMEOUT_S:-270} python3 "$code/bench/gpu_dp2.py" $args > $dir/gpu_dp2.log 2>&1
      echo "gpu_dp2.py ${t#dp2:}: exit $?"; grep -E '"ok"|Traceback|Error' $dir/gpu_dp2.log | tail -4 | cut -c1-1500
      gpu_clean
      rm -rf $dir/tiny-mixtral $dir/tiny-mixtral-tokenizer
      [ -f $dir/gpu_dp2.kvscope ] && finalize $dir/gpu_dp2.kvscope \
        && python3 -m profiler.cli report --json $dir/gpu_dp2.kvscope > $dir/gpu_dp2.report.json 2> $dir/report.err
      ls -la $dir ;;
    multinode|multinode:*)  # a multi-node engine on one host, one GPU per node rank, each under its recorder
      S 0.26.0; setup
      local m runs="multinode multinode_dp"
      [ "$t" != multinode ] && runs=multinode
      for m in $runs; do
        local own=""  # multinode.py ends its node 0 itself first: the node logs stay whole
        [ $m = multinode ] && own="--timeout-s $((${MN_TIMEOUT_S:-240} - 40))"
        [ "$t" = multinode:plain ] && own="$own --plain"
        [ $m = multinode ] && own="$own --gpus ${MN_GPUS:-0,1}" || own="$own --gpus 0,1"
        timeout ${MN_TIMEOUT_S:-240} python3 -m tests.support.$m $dir/gpu_h200x2_$m.kvscope \
          --blocks 2000 $own > $dir/$m.log 2>&1
        echo "$m: exit $?"; grep -vE "^\(|INFO|WARNING|^$" $dir/$m.log | tail -3 | cut -c1-1500
        gpu_clean
        finalize $dir/gpu_h200x2_$m.kvscope/*.kvscope
        python3 -m profiler.cli report --json $dir/gpu_h200x2_$m.kvscope > $dir/$m.report.json 2> $dir/$m.report.err
        echo "$m report: exit $? $(head -c 300 $dir/$m.report.err)"
      done
      rm -rf $dir/tiny-llama ;;  # the node logs (*.node0.log, *.node1.log) stay in $dir
    spec:eagle)
      S 0.26.0; setup
      rec gpu_h200_spec_eagle $dir -- python3 "$code/bench/gpu/engine_run.py" $model --workload spec \
        --engine-args "{\"speculative_config\": {\"method\": \"eagle\", \"model\": \"$eagle\", \"num_speculative_tokens\": 3}}" \
        --counts $dir/spec_eagle_counts.json --raw $dir/spec_eagle_raw.json --max-tokens 64 --prefix-len 3000
      grep -E "drafter_loaded|drafter" $dir/gpu_h200_spec_eagle.report.json | head -3 ;;
    offload13:*)
      S 0.26.0; setup
      local mode=${t#offload13:}
      case $mode in
        plain) timeout ${OFFLOAD_TIMEOUT_S:-240} python3 "$code/bench/gpu_offload.py" $model $dir --engine-run \
                 --counts $dir/counts.json --raw $dir/raw.json > $dir/run.log 2>&1 ;;
        vllmopts) timeout ${OFFLOAD_TIMEOUT_S:-240} python3 "$code/bench/gpu_offload.py" $model $dir --engine-run \
                 --vllm-options --counts $dir/counts.json --raw $dir/raw.json > $dir/run.log 2>&1 ;;
        kvscope) timeout ${OFFLOAD_TIMEOUT_S:-240} python3 "$code/bench/gpu_offload.py" $model $dir --skip-serve > $dir/run.log 2>&1 ;;
      esac
      echo "offload13 $mode: exit $?"
      grep -E "GPU_OFFLOAD_ENGINE_DONE|recorded|Traceback|AssertionError|assert len|scheduler.py" $dir/run.log | tail -6 | cut -c1-600
      gpu_clean; [ -f $dir/gpu_h200_offload.kvscope ] && finalize $dir/gpu_h200_offload.kvscope ;;
    *) echo "unknown task $t" ;;
  esac
  gpu_clean
  rm -rf $dir/work/model 2>/dev/null
  (cd $OUT && tar czf $n.tgz $n && rm -rf $n)
}

nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
for t in "$@"; do
  echo "=== $t $(date -u +%H:%M:%S)"
  TASK_START=$SECONDS
  task "$t"
  echo "=== $t took $((SECONDS - TASK_START)) s"
done
ls -la $OUT
