"""How a vLLM KV block hash is stored in a session (``kv_events.block_hash``): one rule for every
writer (the recorder's in-process KV events and attach's ZMQ subscriber)."""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def fold_hash(value: int | bytes) -> int:
    """A block hash as a signed 64-bit int (bytes hashes keep their low 64 bits, as vLLM does).

    Raises ValueError for an empty bytes hash.
    """
    if isinstance(value, bytes):
        if not value:
            raise ValueError("empty block hash")
        value = int.from_bytes(value, "big")
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value
