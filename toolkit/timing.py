"""How fast each of a few ONNX files runs here, compared fairly: interleaved rounds, as deployed.

One job: `calibrate --repair` records the speed it kept (fp32 / full int8 / repaired) and
benchmarks/precision_repair.py times the files it compares, both with `speed`. Rounds interleave the files, so a
slow phase of a shared machine hits each alike; every figure carries the CPU's speed flags.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def speed(files: dict[str, Path], x: np.ndarray, input_name: str, rounds: int = 7, min_s: float = 0.2) -> dict:
    """Median ms per image of each file at batch len(x) in onnxruntime (all cores, default optimisations, as
    deployed), in interleaved rounds so a slow phase of the machine hits every file alike (each timing at least
    `min_s` long); with this CPU's flags.
    -> {"ms_per_image": {name: ms}, ...}."""
    import contextlib

    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.machine import cpu_flags

    times: dict[str, list[float]] = {name: [] for name in files}
    with contextlib.ExitStack() as stack:
        engines = {name: stack.enter_context(OnnxRuntimeEngine(path)) for name, path in files.items()}
        for e in engines.values():
            e.infer({input_name: x})  # warm-up
        t0 = time.perf_counter()
        engines[next(iter(files))].infer({input_name: x})
        reps = max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))  # each timing spans >= min_s (tiny models)
        for _ in range(rounds):
            for name, e in engines.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    e.infer({input_name: x})
                times[name].append((time.perf_counter() - t0) / reps / len(x) * 1e3)
    ms = {name: statistics.median(v) for name, v in times.items()}
    flags = [f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")]
    return {"batch": len(x), "rounds": rounds, "calls_per_round": reps, "ms_per_image": ms, "cpu_flags": flags}
