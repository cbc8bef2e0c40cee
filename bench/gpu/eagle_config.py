"""Write an EAGLE head for Llama-3-8B (config only) for dummy-weight runs on the lent GPU.

    python bench/gpu/eagle_config.py OUT_DIR

The shape is the public EAGLE-LLaMA3-Instruct-8B head's (yuhuili/EAGLE-LLaMA3-Instruct-8B): one
Llama decoder layer of the target's width (hidden 4096, 32 heads, 8 KV heads, MLP 14336) over the
target's 128,256-token vocabulary. The GPU machine has no network, so the weights are vLLM's
``load_format="dummy"``; the acceptance rate of random weights says nothing about EAGLE, the
drafter's memory, step structure and the recorded stats do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EAGLE_LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "num_attention_heads": 32,
    "num_hidden_layers": 1,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}


def main() -> int:
    """Write OUT_DIR/config.json."""
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(EAGLE_LLAMA3_8B, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
