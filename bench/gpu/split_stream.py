"""Split the bundle stream into pieces named by their byte offset: ``part_<offset>``.

    python bench/gpu/split_stream.py STREAM DEST PIECE_MIB [FROM_OFFSET]

Pieces before FROM_OFFSET (already carried) are not written again; pieces of DEST from
FROM_OFFSET on are replaced. on_device.sh appends a piece when its offset is the stream's length
there, so the remainder can be split at another size between two calls.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    """Write the pieces; print them."""
    stream, dest, piece_mib = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    size = int(piece_mib * 2**20)
    for old in dest.glob("part_*"):
        if int(old.name[5:]) >= start:
            old.unlink()
    total = stream.stat().st_size
    with stream.open("rb") as fh:
        fh.seek(start)
        off = start
        while off < total:
            data = fh.read(size)
            (dest / f"part_{off:010d}").write_bytes(data)
            print(f"part_{off:010d} {len(data) / 2**20:.1f} MiB")
            off += len(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
