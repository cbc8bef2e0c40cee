"""Write a Llama-3-8B-shaped model directory (config + byte tokenizer, no weights) for dummy loads.

    python bench/gpu_model.py OUT_DIR TOKENIZER_DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main() -> int:
    """Save the config and copy the tokenizer files."""
    from transformers import LlamaConfig

    out, tok = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=16384,
                rope_theta=500000.0, torch_dtype="bfloat16", bos_token_id=256,
                eos_token_id=257).save_pretrained(out)
    for f in tok.iterdir():
        shutil.copy(f, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
