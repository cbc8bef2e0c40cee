"""kvscope: GPU-memory and KV-cache profiler for vLLM.

``profiler.record(path)`` records every vLLM engine created inside the ``with`` block. Importing
this package never imports vLLM, torch or NVML; collectors load them only in recorded processes.
"""

from __future__ import annotations

from profiler.recorder.api import record

__version__ = "0.1.0"

__all__ = ["__version__", "record"]
