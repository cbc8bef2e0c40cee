"""GPU scenarios for issue 14 on the lent H200: speculative decoding (EAGLE and a draft model) and
models whose KV cache has several groups, recorded by kvscope and checked against vLLM's own counts.

    python bench/gpu_configs.py --out DIR [--only NAME ...] [--list] [--timeout-s 420]

No internet on that machine: every model is a config written here with the byte tokenizer of
``tests/support/tinymodel.py`` and loaded with ``load_format="dummy"`` (random weights):

- ``spec_base``  Llama-3-8B shapes, no speculation; short prompts (200 tokens), then long (4,000)
- ``spec_eagle`` same workload, EAGLE (a 1-layer Llama head written here), 3 tokens per draft
- ``spec_draft`` same workload, a draft model (Llama-3.2-1B shapes), 3 tokens per draft
- ``groups_gemma2`` Gemma-2-9B shapes (8 layers): sliding window 4,096 beside full attention
- ``groups_gemma3`` Gemma-3 shapes (6 layers, 5 sliding : 1 full, window 1,024)
- ``groups_granite`` Granite-4.0-H-Micro shapes (GraniteMoeHybrid, dense MLP, 8 layers: 6 Mamba-2,
  2 attention): a hybrid attention/Mamba cache (Bamba, the first choice, left vLLM in 0.23)
- ``groups_bamba``  Bamba (Mamba-2 beside attention, 8 layers), for vLLM releases before 0.23
- ``groups_mla``    DeepSeek-V2-Lite shapes (4 layers): MLA, one group of its own kind

Each runs ``tests/support/workload.py`` under ``kvscope record`` with an independent StatLoggerBase
(``--counts``) and ``KVSCOPE_KV_GROUP_INTERVAL_MS=0`` (every step's group blocks). Checks per run:
the session's steps equal the counter's; speculation: drafts, draft tokens, accepted tokens and
accepted per position equal vLLM's own sums, the drafter's weights are > 0 (EAGLE, draft model);
groups: as many ``kv_cache_groups`` as the engine made, each step's group blocks add up to vLLM's
own KV usage for that step. ``DIR/gpu_configs.json`` holds every check, the memory swing of
speculation (with − without) and each session's ``spec_decode`` / ``kv_cache.groups``;
``DIR/gpu_configs.tgz`` the sessions (WAL folded), counts and logs (the device returns 8 files).

Written for vLLM 0.26 on one H200 (also runs 0.20-0.33 as far as each version has the method).
A device call lasts at most 10 minutes: run it in two calls, e.g.
``--only spec_base spec_eagle spec_draft`` (the swing needs spec_base in the same call), then
``--only groups_gemma2 groups_gemma3 groups_bamba groups_mla``. kvscope must be installed in that
Python (``pip install --no-deps --no-build-isolation -e .``: vLLM finds its plugin that way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKLOAD = ROOT / "tests" / "support" / "workload.py"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tokenizer(models: Path) -> Path:
    """The byte-level tokenizer (built with a tiny Llama, whose weights are not used here)."""
    from tests.support.tinymodel import build_tiny_llama

    return build_tiny_llama(models / "tokenizer-src")


def _save(config: Any, out: Path, models: Path, arch: str) -> Path:
    """Write ``config`` (architecture set: vLLM and the EAGLE wrapper read it) and the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    config.architectures = [arch]
    config.save_pretrained(out)
    tok = _tokenizer(models)
    for name in TOKENIZER_FILES:
        if (tok / name).exists():
            shutil.copy(tok / name, out / name)
    return out


COMMON = dict(bos_token_id=256, eos_token_id=257, torch_dtype="bfloat16")


def llama8b(models: Path) -> Path:
    from transformers import LlamaConfig

    return _save(LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             max_position_embeddings=16384, rope_theta=500000.0, **COMMON),
                 models / "llama8b", models, "LlamaForCausalLM")


def eagle_head(models: Path) -> Path:
    """An EAGLE-1 head for Llama-3-8B: one decoder layer of the target's shape (vLLM wraps the
    ``LlamaForCausalLM`` architecture as ``EagleLlamaForCausalLM`` for method ``eagle``)."""
    from transformers import LlamaConfig

    return _save(LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8,
                             max_position_embeddings=16384, rope_theta=500000.0, **COMMON),
                 models / "eagle-llama3-8b", models, "LlamaForCausalLM")


def llama1b(models: Path) -> Path:
    from transformers import LlamaConfig

    return _save(LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                             num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                             head_dim=64, max_position_embeddings=16384, rope_theta=500000.0,
                             tie_word_embeddings=True, **COMMON),
                 models / "llama1b", models, "LlamaForCausalLM")


def gemma2(models: Path) -> Path:
    from transformers import Gemma2Config

    return _save(Gemma2Config(vocab_size=256000, hidden_size=3584, intermediate_size=14336,
                              num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                              head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
                              max_position_embeddings=16384, pad_token_id=0, **COMMON),
                 models / "gemma2-9b-8l", models, "Gemma2ForCausalLM")


def gemma3(models: Path) -> Path:
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=262208, hidden_size=2560, intermediate_size=10240,
                           num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                           head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                           max_position_embeddings=16384, pad_token_id=0, **COMMON)
    return _save(cfg, models / "gemma3-4b-6l", models, "Gemma3ForCausalLM")


def bamba(models: Path) -> Path:
    from transformers import BambaConfig

    cfg = BambaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8,
                      attn_layer_indices=[3, 7], mamba_n_heads=64, mamba_d_head=64,
                      mamba_n_groups=1, mamba_d_state=128, mamba_expand=2,
                      max_position_embeddings=16384, pad_token_id=0, **COMMON)
    return _save(cfg, models / "bamba-8l", models, "BambaForCausalLM")


def granite_hybrid(models: Path) -> Path:
    """Granite-4.0-H-Micro's shapes cut to 8 layers (attention at 3 and 7, Mamba-2 elsewhere),
    dense MLP (``num_local_experts=0``): vLLM's ``GraniteMoeHybridForCausalLM``."""
    from transformers import GraniteMoeHybridConfig

    layer_types = ["attention" if i in (3, 7) else "mamba" for i in range(8)]
    cfg = GraniteMoeHybridConfig(vocab_size=100352, hidden_size=2048, intermediate_size=8192,
                                 shared_intermediate_size=8192, num_local_experts=0,
                                 num_experts_per_tok=0, num_hidden_layers=8, layer_types=layer_types,
                                 num_attention_heads=16, num_key_value_heads=4, mamba_n_heads=64,
                                 mamba_d_head=64, mamba_n_groups=1, mamba_d_state=128,
                                 mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=256,
                                 position_embedding_type="rope", max_position_embeddings=16384,
                                 pad_token_id=0, **COMMON)
    return _save(cfg, models / "granite-4.0-h-8l", models, "GraniteMoeHybridForCausalLM")


def deepseek_v2_lite(models: Path) -> Path:
    from transformers import DeepseekV2Config

    cfg = DeepseekV2Config(vocab_size=102400, hidden_size=2048, intermediate_size=10944,
                           moe_intermediate_size=1408, num_hidden_layers=4, num_attention_heads=16,
                           num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2,
                           num_experts_per_tok=6, n_group=1, topk_group=1, topk_method="greedy",
                           first_k_dense_replace=1, kv_lora_rank=512,
                           q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128,
                           v_head_dim=128, max_position_embeddings=16384, pad_token_id=0, **COMMON)
    return _save(cfg, models / "deepseek-v2-lite-4l", models, "DeepseekV2ForCausalLM")


SPEC_WORKLOAD = ["--requests", "128", "--prefixes", "8", "--prefix-len", "200",
                 "--then-prefix-len", "4000", "--max-tokens", "128", "--max-num-seqs", "64",
                 "--max-model-len", "8192", "--arrivals-per-step", "8"]
"""Short prompts (~200 tokens), drained, then the same count with ~4,000-token prompts."""
GROUP_WORKLOAD = ["--requests", "64", "--prefixes", "4", "--prefix-len", "6000",
                  "--max-tokens", "64", "--max-num-seqs", "32", "--max-model-len", "16384",
                  "--arrivals-per-step", "4"]
"""Prompts longer than the sliding windows, so sliding-window groups free blocks."""


@dataclass(frozen=True)
class Scenario:
    """One recorded run."""

    name: str
    model: Callable[[Path], Path]
    workload: list[str]
    spec: Callable[[Path], dict[str, Any]] | None = None
    min_groups: int = 1
    extra: list[str] = field(default_factory=list)


SCENARIOS = [
    Scenario("spec_base", llama8b, SPEC_WORKLOAD),
    Scenario("spec_eagle", llama8b, SPEC_WORKLOAD,
             spec=lambda m: {"method": "eagle", "model": str(eagle_head(m)), "num_speculative_tokens": 3}),
    Scenario("spec_draft", llama8b, SPEC_WORKLOAD,
             spec=lambda m: {"method": "draft_model", "model": str(llama1b(m)),
                             "num_speculative_tokens": 3}),
    # the group runs skip CUDA-graph capture (--enforce-eager): groups do not depend on it
    Scenario("groups_gemma2", gemma2, GROUP_WORKLOAD, min_groups=2, extra=["--enforce-eager"]),
    Scenario("groups_gemma3", gemma3, GROUP_WORKLOAD, min_groups=2, extra=["--enforce-eager"]),
    # hybrid Mamba models may not take prefix caching on every version: off here
    Scenario("groups_bamba", bamba, GROUP_WORKLOAD, min_groups=2,
             extra=["--enforce-eager", "--no-prefix-caching"]),
    Scenario("groups_granite", granite_hybrid, GROUP_WORKLOAD, min_groups=2,
             extra=["--enforce-eager", "--no-prefix-caching"]),
    Scenario("groups_mla", deepseek_v2_lite, GROUP_WORKLOAD, min_groups=1, extra=["--enforce-eager"]),
]


def check(s: Scenario, session: Path, counts: dict[str, Any], rep: dict[str, Any]) -> dict[str, Any]:
    """The checks of one run: name → true, or what differed."""
    from tests.support import checks

    out: dict[str, Any] = {"steps": rep["steps"] == counts["steps"] or f"{rep['steps']} != {counts['steps']}"}
    if s.spec is not None:
        out |= checks.spec_decode_matches(rep, counts)
        drafter = rep["memory"].get("drafter_weights_bytes")
        out["drafter_weights"] = (drafter or 0) > 0 or f"{drafter}"
    else:
        out["no_spec_decode"] = rep.get("spec_decode") is None or f"{rep.get('spec_decode')}"
    groups = rep["kv_cache"]["groups"]
    out["groups"] = len(groups) >= s.min_groups or f"{len(groups)} < {s.min_groups}"
    blocks = {g["num_blocks"] for g in groups}
    out["group_pool_is_vllms"] = blocks == {counts.get("num_gpu_blocks")} or f"{blocks} vs {counts.get('num_gpu_blocks')}"
    if len(groups) > 1:
        out["group_blocks_match_usage"] = checks.group_blocks_match_usage(
            session, counts, groups[0]["num_blocks"])
    return out


def run(s: Scenario, out: Path, models: Path, timeout_s: float) -> dict[str, Any]:
    """Record one scenario and check it."""
    try:
        model = s.model(models)
        spec = s.spec(models) if s.spec else None
    except Exception as exc:  # this transformers lacks the config class: a row, not a crash
        return {"name": s.name, "exit": "model config", "error": [f"{type(exc).__name__}: {exc}"]}
    session, counts_path, log = out / f"{s.name}.kvscope", out / f"{s.name}_counts.json", out / f"{s.name}.log"
    for p in (session, counts_path):
        p.unlink(missing_ok=True)
    extra = ["--speculative-config", json.dumps(spec)] if spec else []
    cmd = [sys.executable, "-m", "profiler.cli", "record", "--session", str(session), "--",
           sys.executable, str(WORKLOAD), str(model), "--engine", "llmengine", "--load-format",
           "dummy", "--blocks", "0", "--gpu-memory-utilization", "0.85", "--counts",
           str(counts_path), *s.workload, *extra, *s.extra]
    env = dict(os.environ, KVSCOPE_KV_GROUP_INTERVAL_MS="0", PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    try:
        with log.open("w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    result: dict[str, Any] = {"name": s.name, "exit": rc, "wall_s": round(time.monotonic() - t0, 1)}
    if rc != 0 or not counts_path.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        result["error"] = [line[-300:] for line in tail]
        return result
    rep = json.loads(subprocess.run([sys.executable, "-m", "profiler.cli", "report", "--json", str(session)],
                                    capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    counts = json.loads(counts_path.read_text())
    result["checks"] = check(s, session, counts, rep)
    result["ok"] = all(v is True for v in result["checks"].values())
    result["report"] = {k: rep.get(k) for k in ("spec_decode", "spec_decode_by_prompt_length",
                                                "memory", "throughput", "cost", "latency_s")}
    result["report"]["kv_groups"] = rep["kv_cache"]["groups"]
    result["report"]["num_gpu_blocks"] = rep["engine"]["num_gpu_blocks"]
    result["report"]["peak_kv_usage_frac"] = rep["kv_cache"]["peak_usage_frac"]
    result["report"]["findings"] = [(f["code"], f["recommendation"]) for f in rep["findings"]]
    return result


def swing(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Memory and speed swing of each speculating run against ``spec_base``."""
    from profiler.analysis.spec_decode import spec_swing

    base = results.get("spec_base", {}).get("report")
    out = {}
    for name in ("spec_eagle", "spec_draft"):
        rep = results.get(name, {}).get("report")
        if base and rep:
            def as_report(r: dict[str, Any]) -> dict[str, Any]:
                return {"spec_decode": r["spec_decode"], "memory": r["memory"],
                        "engine": {"num_gpu_blocks": r["num_gpu_blocks"]},
                        "kv_cache": {"peak_usage_frac": r["peak_kv_usage_frac"]}, "gpus": [],
                        "throughput": r["throughput"], "latency_s": r["latency_s"]}
            out[name] = spec_swing(as_report(rep), as_report(base))
    return out


def fold(path: Path) -> None:
    """Fold the WAL into the file (readers need no write access), like sessions/make_sessions.py."""
    c = sqlite3.connect(path)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.execute("PRAGMA journal_mode = DELETE")
    c.execute("VACUUM")
    c.close()


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; write DIR/gpu_configs.json and DIR/gpu_configs.tgz."""
    ap = argparse.ArgumentParser(prog="python bench/gpu_configs.py")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--models", default="/tmp/kvscope-gpu-models")
    ap.add_argument("--only", nargs="+", choices=[s.name for s in SCENARIOS])
    ap.add_argument("--timeout-s", type=float, default=420.0, help="per scenario")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        print("\n".join(s.name for s in SCENARIOS))
        return 0
    import importlib.metadata as md

    if not any(ep.name == "kvscope" for ep in md.entry_points(group="vllm.general_plugins")):
        print("kvscope's vLLM plugin is not installed here: run "
              "`python3 -m pip install --no-deps --no-build-isolation -e .` first")
        return 2
    out, models = Path(a.out), Path(a.models)
    out.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    try:
        import vllm

        version = vllm.__version__
    except Exception as exc:
        version = f"not importable: {exc}"
    results: dict[str, dict[str, Any]] = {}
    for s in SCENARIOS:
        if a.only and s.name not in a.only:
            continue
        results[s.name] = run(s, out, models, a.timeout_s)
        r = results[s.name]
        print(json.dumps({k: r.get(k) for k in ("name", "exit", "wall_s", "ok", "checks", "error")}),
              flush=True)
    summary = {"vllm_version": version, "date": time.strftime("%Y-%m-%d"), "results": results,
               "spec_swing_vs_base": swing(results)}
    (out / "gpu_configs.json").write_text(json.dumps(summary, indent=1, default=str))
    for p in out.glob("*.kvscope"):
        try:
            fold(p)
        except sqlite3.Error as exc:
            print(f"could not fold {p}: {exc}")
    with tarfile.open(out / "gpu_configs.tgz", "w:gz") as tar:
        for p in sorted(out.iterdir()):
            if p.suffix in (".kvscope", ".log") or p.name.endswith("_counts.json"):
                tar.add(p, arcname=p.name)
    for p in list(out.iterdir()):
        if p.name not in ("gpu_configs.json", "gpu_configs.tgz"):
            p.unlink()
    ok = [r.get("ok") is True for r in results.values()]
    print(f"{sum(ok)}/{len(ok)} scenarios passed every check; {out / 'gpu_configs.json'}")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
