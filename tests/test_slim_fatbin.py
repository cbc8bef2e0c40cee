"""bench/gpu/slim_fatbin.py on a hand-built ELF: other SM majors' machine code is zeroed, sm_9x
code, PTX, headers and every byte outside the payloads stay; a section that does not parse is left
alone."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("slim_fatbin", ROOT / "bench" / "gpu" / "slim_fatbin.py")
assert _spec is not None and _spec.loader is not None
slim_fatbin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slim_fatbin)


def _entry(kind: int, sm: int, payload: bytes) -> bytes:
    header = struct.pack("<HHIQ", kind, 0x101, 64, len(payload)) + bytes(12) + struct.pack("<I", sm)
    return header + bytes(64 - len(header)) + payload


def _fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", slim_fatbin.FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf(section: bytes) -> bytes:
    """A minimal ELF64: header, the section's bytes, a string table, three section headers."""
    strtab = b"\0.nv_fatbin\0.shstrtab\0"
    data_off = 64
    str_off = data_off + len(section)
    sh_off = str_off + len(strtab)
    header = (b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
              + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 2))

    def sh(name: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 8, 0)

    return header + section + strtab + bytes(64) + sh(1, data_off, len(section)) + sh(11, str_off, len(strtab))


def test_other_majors_are_blanked_and_everything_else_kept(tmp_path: Path) -> None:
    sm80, sm90, ptx, sm120 = b"A" * 40, b"B" * 24, b"C" * 16, b"D" * 8
    section = _fatbin(_entry(2, 80, sm80), _entry(2, 90, sm90), _entry(1, 80, ptx)) + bytes(8) \
        + _fatbin(_entry(2, 120, sm120))
    lib = tmp_path / "lib.so"
    original = _elf(section)
    lib.write_bytes(original)

    blanked, kept = slim_fatbin.slim(lib, keep_major=9)

    after = lib.read_bytes()
    assert (blanked, kept) == (len(sm80) + len(sm120), len(sm90) + len(ptx))
    assert len(after) == len(original)
    assert sm80 not in after and sm120 not in after
    assert sm90 in after and ptx in after
    changed = [i for i, (a, b) in enumerate(zip(original, after, strict=True)) if a != b]
    starts = [original.index(sm80), original.index(sm120)]
    assert changed == [*range(starts[0], starts[0] + len(sm80)), *range(starts[1], starts[1] + len(sm120))]


def test_a_section_that_does_not_parse_is_left_alone(tmp_path: Path) -> None:
    bad = _fatbin(_entry(2, 80, b"A" * 40))
    bad = bad[:8] + struct.pack("<Q", len(bad) - 16 + 4) + bad[16:] + bytes(8)  # header overstates
    lib = tmp_path / "lib.so"
    lib.write_bytes(_elf(bad))
    before = lib.read_bytes()

    assert slim_fatbin.main(["--keep-major", "9", str(lib)]) == 0
    assert lib.read_bytes() == before


def test_no_code_for_the_kept_major_refuses(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_bytes(_elf(_fatbin(_entry(2, 100, b"E" * 8), _entry(2, 120, b"F" * 8))))
    before = lib.read_bytes()

    with pytest.raises(ValueError, match="no sm_9x"):
        slim_fatbin.slim(lib, keep_major=9)
    assert lib.read_bytes() == before
