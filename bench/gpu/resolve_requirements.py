"""Resolve the wheels a vLLM release needs on the lent GPU machine, minus what its image has.

    python bench/gpu/resolve_requirements.py 0.23.0 > bench/gpu/requirements-0.23.0.txt

pip resolves ``vllm==VERSION`` for CPython 3.12 on manylinux x86-64 (``pip install --dry-run
--report``: metadata only). The GPU image already has torch 2.11.0+cu130 and its family, and the
packages of KINDS.md's list; those (and the optional GPU kernel packages vLLM imports lazily:
FlashInfer, TileLang, CUTLASS DSL, ...) are stand-ins here: empty local wheels of a version that
satisfies the pin, so pip neither downloads nor descends into them. What remains is printed as
``name==version`` lines, the bundle's requirements for that release.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PLATFORMS = ["manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "any"]

ON_IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py
hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())
"""Packages the GPU image 'cuda' holds (KINDS.md, read 2026-11-17)."""

STAND_INS = {"torch", "torchaudio", "torchvision", "torchcodec", "triton", "pynvvideocodec",
             "flashinfer-python", "flashinfer-cubin", "flashinfer-jit-cache", "tilelang",
             "nvidia-cudnn-frontend", "nvtx", "fastsafetensors", "nvidia-cutlass-dsl",
             "nvidia-cutlass-dsl-libs-base", "quack-kernels", "tokenspeed-mla", "humming-kernels",
             "numba", "transformers", "numpy", "pandas", "nvidia-ml-py"}
"""Not resolved further: on the image (torch's family, transformers, numpy, pandas, NVML) or GPU
kernel packages vLLM imports only when a feature asks for them (Llama on FlashAttention does not)."""


def norm(name: str) -> str:
    """PEP 503 name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_version(spec: str) -> str:
    """A version that satisfies ``spec`` well enough for a stand-in: the ``==`` pin, else 9999."""
    m = re.search(r"==\s*([0-9][0-9A-Za-z.]*)", spec)
    # the local label makes pip prefer the stand-in over the index's wheel of the same version
    return f"{m.group(1)}+standin" if m else "9999"


def stand_in(dest: Path, name: str, version: str) -> None:
    """An empty wheel ``name==version`` without requirements."""
    dist = f"{norm(name).replace('-', '_')}-{version}"
    with zipfile.ZipFile(dest / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")


def vllm_requirements(version: str, tmp: Path) -> list[str]:
    """Requires-Dist lines (no extras) of the vllm wheel for ``version``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(tmp),
                    f"vllm=={version}"], check=True)
    whl = next(tmp.glob(f"vllm-{version}*.whl"))
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
            if ln.startswith("Requires-Dist:") and "extra ==" not in ln]


def resolve(version: str) -> list[str]:
    """``name==version`` of every wheel the bundle needs for vLLM ``version``."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stubs = tmp / "stubs"
        stubs.mkdir()
        pins = {}
        for req in vllm_requirements(version, tmp):
            name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
            if norm(name) in STAND_INS:
                pins[norm(name)] = pinned_version(req.split(";")[0])
        for name in STAND_INS:
            stand_in(stubs, name, pins.get(name, "9999"))
        report = tmp / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", str(report), "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
                        "--find-links", str(stubs), "--target", str(tmp / "target"),
                        f"vllm=={version}"], check=True)
        got = json.loads(report.read_text())["install"]
    return sorted(f"{m['name']}=={m['version']}" for m in (i["metadata"] for i in got)
                  if norm(m["name"]) not in ON_IMAGE | STAND_INS)


if __name__ == "__main__":
    print("\n".join(resolve(sys.argv[1])))
