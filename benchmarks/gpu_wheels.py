"""`make gpu-wheels`: the wheels the GPU machine lacks, for its Python 3.12, in `.whl/` (git-ignored), checked
to fit one device call (64 MiB with the working tree). The machine already has torch, torchvision,
huggingface-hub, safetensors, regex, tqdm, onnx, onnxruntime (CPU), scikit-learn (device/KINDS.md); it lacks
open_clip (and its ftfy, wcwidth) and diffusers (and importlib-metadata). Versions are this venv's.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("open_clip_torch", "ftfy", "wcwidth", "diffusers", "importlib_metadata")
LIMIT = 64 << 20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def main(out: Path = Path(".whl")) -> None:
    out.mkdir(exist_ok=True)
    pins = [f"{p}=={metadata.version(p)}" for p in PACKAGES]
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out), *pins]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = sorted(out.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(f"{total / 2**20:7.2f} MiB in {len(wheels)} wheels (limit per device call: {LIMIT >> 20} MiB with the tree)")
    if total > LIMIT:
        raise SystemExit(f"{out} holds {total / 2**20:.1f} MiB: more than one device call carries; remove old wheels")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".whl"))
