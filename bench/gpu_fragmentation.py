"""Record real caching-allocator fragmentation on a GPU with kvscope's own collectors.

    PYTHONPATH=. python3 bench/gpu_fragmentation.py OUT.kvscope

No vLLM: one torch process plays a worker. It fills the GPU allocator with 64 MiB blocks, frees
three of every four (reserved stays, allocated falls), then asks for 96 MiB blocks that fit none of
the holes, so reserved memory grows while half of it sits idle. kvscope's allocator sampler and
NVML sampler record it exactly as they do inside a vLLM worker.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    """Run the allocation pattern under a kvscope session."""
    out = os.path.abspath(sys.argv[1])
    os.environ["KVSCOPE_SESSION"] = out
    import torch

    from profiler.recorder import context
    from profiler.recorder.allocator import start_allocator_sampler

    w = context.writer()
    assert w is not None
    context.claim_owner(["bench/gpu_fragmentation.py"])
    torch.cuda.init()
    torch.cuda.set_device(0)
    context.register_process("worker", rank=0)
    start_allocator_sampler(w, 0.05)
    mib = 2**20
    blocks = [torch.empty(64 * mib, dtype=torch.uint8, device="cuda") for _ in range(160)]
    time.sleep(2.0)
    blocks = blocks[::4]  # 120 holes of 64 MiB that the next requests cannot use
    time.sleep(2.0)
    bigger = [torch.empty(96 * mib, dtype=torch.uint8, device="cuda") for _ in range(60)]
    torch.cuda.synchronize()
    time.sleep(4.0)
    stats = torch.cuda.memory_stats()
    print("allocated GiB", stats["allocated_bytes.all.current"] / 2**30,
          "reserved GiB", stats["reserved_bytes.all.current"] / 2**30, len(bigger))
    context.finish_session(w, exit_code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
