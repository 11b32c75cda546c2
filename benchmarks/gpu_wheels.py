"""`make gpu-wheels`: the wheels the GPU machine lacks, for its Python 3.12, in `.whl/` (git-ignored), checked to
fit one device call (64 MiB with the working tree). The folder is emptied first: a stale wheel beside a new one
of the same package stops `pip install --no-index` on the machine.

What the machine has is `MACHINE_PACKAGES` (its image's package list, as read there in 2026-11); it lacks
open_clip (and its ftfy, wcwidth) and diffusers. `importlib_metadata` is not carried: diffusers imports the
standard library's `importlib.metadata` on Python >= 3.8. Versions are this venv's. `tests/test_gpu_suite.py`
installs the carried set with `--no-index --no-deps --target` and imports it with only these packages visible.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("open_clip_torch", "ftfy", "wcwidth", "diffusers")
LIMIT = 64 << 20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# the GPU machine's Python packages (its image 'cuda', Python 3.12.3), as distribution names, as listed there
_MACHINE_LISTING = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
"""
MACHINE_PACKAGES = frozenset(_MACHINE_LISTING.split())


def download(out: Path, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Empty `out`, then download this venv's version of each package for CPython 3.12 (no dependencies)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    pins = [f"{p}=={metadata.version(p)}" for p in packages]
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out), *pins]  # fmt: skip
    subprocess.run(cmd, check=True)
    return sorted(out.glob("*.whl"))


def main(out: Path = Path(".whl")) -> None:
    wheels = download(out)
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(f"{total / 2**20:7.2f} MiB in {len(wheels)} wheels (limit per device call: {LIMIT >> 20} MiB with the tree)")
    if total > LIMIT:
        raise SystemExit(f"{out} holds {total / 2**20:.1f} MiB: more than one device call carries")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".whl"))
