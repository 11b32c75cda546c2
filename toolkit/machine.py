"""What this machine's CPU can do fast: the instruction-set flags that decide engine and precision choices."""

from __future__ import annotations

import platform

SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu_flags() -> list[str]:
    """The instruction-set flags that decide CPU inference speed (int8 needs VNNI, bf16 AVX512_BF16/AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [fl for fl in SPEED_FLAGS if fl in have]
    except OSError:
        pass
    return []


def has_vnni(flags: list[str] | None = None) -> bool:
    """int8 dot products in one instruction (AVX512-VNNI, AVX-VNNI or AMX); without it int8 GEMMs use
    VPMADDUBSW, whose int16 sums can saturate."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def int8_pairs_saturate(flags: list[str] | None = None) -> bool:
    """x86 with AVX2 but no VNNI (AVX2 alone, or AVX-512 without VNNI): onnxruntime's int8 GEMM multiplies with
    VPMADDUBSW there, adding u8 x s8 products in int16 pairs that saturate (calibration/saturation.py)."""
    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags and not has_vnni(flags)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
