"""Build a tiny random-weight Llama and a byte-level tokenizer on disk.

Used by the tests, the benchmarks and the script that regenerates the bundled sessions, so
that every one of them drives a real vLLM engine without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 512
"""256 byte tokens plus specials and spare ids."""


def build_tiny_llama(out_dir: str | Path, max_position_embeddings: int = 8192) -> Path:
    """Write a 2-layer Llama (hidden 128, 2 heads, 1 KV head, head_dim 64) and tokenizer to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=256,
        eos_token_id=257,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_of)
    vocab = {ch: _byte_of(ch) for ch in alphabet}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens(["<s>", "</s>"])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_max_length"] = max_position_embeddings
    cfg_path.write_text(json.dumps(cfg))
    return out


SLIDING_WINDOW_TOKENS = 256
"""Window of the tiny Gemma-2's sliding-window layers: two 128-token CPU blocks (plus one)."""


def build_tiny_gemma2(out_dir: str | Path, max_position_embeddings: int = 8192) -> Path:
    """Write a 2-layer Gemma-2 (layer 0 sliding window of ``SLIDING_WINDOW_TOKENS``, layer 1 full
    attention: two KV-cache groups in vLLM), random weights, with the tiny Llama's tokenizer."""
    import shutil

    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    tokenizer = build_tiny_llama(out.parent / f"{out.name}-tokenizer", max_position_embeddings)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
        sliding_window=SLIDING_WINDOW_TOKENS, max_position_embeddings=max_position_embeddings,
        bos_token_id=256, eos_token_id=257, pad_token_id=257, torch_dtype="float32",
    )
    Gemma2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, out / name)
    return out


def _byte_of(ch: str) -> int:
    """The byte that GPT-2's reversible ByteLevel table maps to ``ch``."""
    code = ord(ch)
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]
