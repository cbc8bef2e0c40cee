"""Blank the GPU machine code of other architectures inside a CUDA shared library's fatbins.

    python bench/gpu/slim_fatbin.py --keep-major 9 LIB.so [...]     (in place)

vLLM's kernels ship SASS for sm_75 ... sm_120 in the ``.nv_fatbin`` section. The lent GPU is a
Hopper (sm_90): the driver loads the sm_9x entry (or JIT-compiles a PTX entry) and never reads the
others. Their payloads are overwritten with zeros, which xz then stores in almost nothing; every
header, every PTX entry and the file's layout stay as they were. A section whose entries do not
parse exactly (the walk must end at the section's end) is left untouched.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


class Entry(NamedTuple):
    """One fatbin entry: kind (1 PTX, 2 ELF), SM version (90 = sm_90), payload bytes."""

    kind: int
    sm: int
    start: int
    size_bytes: int


def section(data: bytes, name: str) -> tuple[int, int] | None:
    """(file offset, size) of an ELF64 section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, ...]:
        return struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)

    names = header(shstrndx)[4]
    for i in range(shnum):
        h = header(i)
        start = names + h[0]
        if data[start:data.index(b"\0", start)].decode() == name:
            return h[4], h[5]
    return None


def entries(data: bytes, off: int, size: int) -> Iterator[Entry]:
    """Every entry of every fatbin in the section; ValueError when the layout does not add up."""
    p, end = off, off + size
    while p < end:
        if struct.unpack_from("<I", data, p)[0] != FATBIN_MAGIC:
            p += 8  # fatbins are 8-byte aligned, padded with zeros
            continue
        _version, header_size, fat_size = struct.unpack_from("<HHQ", data, p + 4)
        q, q_end = p + header_size, p + header_size + fat_size
        while q < q_end:
            kind, _v, entry_header, payload = struct.unpack_from("<HHIQ", data, q)
            sm = struct.unpack_from("<I", data, q + 28)[0]
            if kind not in (KIND_PTX, KIND_ELF) or entry_header < 32:
                raise ValueError(f"unknown fatbin entry kind {kind} at {q}")
            yield Entry(kind, sm, q + entry_header, payload)
            q += entry_header + payload
        if q != q_end:
            raise ValueError(f"fatbin at {p} does not end where its header says")
        p = q_end
    if p != end:
        raise ValueError("fatbins overrun the section")


def slim(path: Path, keep_major: int) -> tuple[int, int]:
    """Blank ELF entries of other SM majors in place; (bytes blanked, bytes kept in entries)."""
    data = bytearray(path.read_bytes())
    sec = section(bytes(data), ".nv_fatbin")
    if sec is None:
        return 0, 0
    found = list(entries(bytes(data), *sec))
    blanked = kept = 0
    for e in found:
        if e.kind == KIND_ELF and e.sm // 10 != keep_major:
            data[e.start:e.start + e.size_bytes] = bytes(e.size_bytes)
            blanked += e.size_bytes
        else:
            kept += e.size_bytes
    if not any(e.kind == KIND_ELF and e.sm // 10 == keep_major for e in found) and blanked:
        raise ValueError(f"{path}: no sm_{keep_major}x code; refusing to blank the rest")
    path.write_bytes(data)
    return blanked, kept


def main(argv: list[str] | None = None) -> int:
    """Slim each library; print what was blanked."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep-major", type=int, default=9)
    ap.add_argument("libs", nargs="+", type=Path)
    a = ap.parse_args(argv)
    for lib in a.libs:
        try:
            blanked, kept = slim(lib, a.keep_major)
        except ValueError as exc:
            print(f"{lib.name}: left as it is ({exc})")
            continue
        print(f"{lib.name}: blanked {blanked / 2**20:.1f} MiB, kept {kept / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
