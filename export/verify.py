"""Export verification gates: an exported engine against the PyTorch fp32 reference on the same feeds.

Each precision has a gate (a dataclass of configurable bounds); `check` returns the failures with the
numbers, and a failed gate fails the export (no manifest is written).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.evaluation import parity_stats as compare  # one definition, shared with benchmarks/

__all__ = [
    "GATES",
    "IMAGE_GATES",
    "Fp16Gate",
    "Fp32Gate",
    "ImageFp16Gate",
    "ImageFp32Gate",
    "check",
    "compare",
    "image_parity",
]


@dataclass
class Fp32Gate:
    max_abs_logit: float = 1e-4  # max |logit - reference logit|
    min_decision_agreement: float = 1.0  # identical decisions at the threshold

    def bounds(self) -> list[tuple[str, str, float]]:
        return [("max_abs_logit", "<=", self.max_abs_logit), ("decision_agreement", ">=", self.min_decision_agreement)]


@dataclass
class Fp16Gate:
    min_cosine_feature: float = 0.999  # cosine of each feature vector with the reference
    min_decision_agreement: float = 0.995

    def bounds(self) -> list[tuple[str, str, float]]:
        return [
            ("min_cosine_feature", ">=", self.min_cosine_feature),
            ("decision_agreement", ">=", self.min_decision_agreement),
        ]


@dataclass
class ImageFp32Gate:
    max_abs_pixel: float = 1e-4  # image outputs in [0, 1] (the purifier)

    def bounds(self) -> list[tuple[str, str, float]]:
        return [("max_abs_pixel", "<=", self.max_abs_pixel)]


@dataclass
class ImageFp16Gate:
    min_psnr_db: float = 40.0  # PSNR of the fp16 output against the PyTorch fp32 output

    def bounds(self) -> list[tuple[str, str, float]]:
        return [("min_psnr_db", ">=", self.min_psnr_db)]


GATES = {"fp32": Fp32Gate, "fp16": Fp16Gate}
IMAGE_GATES = {"fp32": ImageFp32Gate, "fp16": ImageFp16Gate}


def image_parity(ref: dict, got: dict, name: str = "purified") -> dict:
    r, g = ref[name].astype(np.float64), got[name].astype(np.float64)
    mse = ((r - g) ** 2).reshape(len(r), -1).mean(1)
    psnr = np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-20)), np.inf)
    return {"max_abs_pixel": float(np.abs(r - g).max()), "min_psnr_db": float(psnr.min()), "n": len(r)}


def check(stats: dict, gate) -> tuple[bool, list[str]]:
    fails = []
    for key, op, bound in gate.bounds():
        v = stats[key]
        if (op == "<=" and v > bound) or (op == ">=" and v < bound):
            fails.append(f"{key} {v:.8g} (gate {op} {bound:.8g})")
    return not fails, fails
