"""Export verification gates: an exported engine against the PyTorch fp32 reference on the same feeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Fp32Gate:
    max_abs_logit: float = 1e-4  # max |logit - reference logit|
    min_decision_agreement: float = 1.0  # identical decisions at the threshold


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], threshold: float) -> dict:
    lr, lg = ref["logit"].astype(np.float64), got["logit"].astype(np.float64)
    fr, fg = ref["feature"].astype(np.float64), got["feature"].astype(np.float64)
    cos = (fr * fg).sum(1) / (np.linalg.norm(fr, axis=1) * np.linalg.norm(fg, axis=1) + 1e-12)
    return {
        "max_abs_logit": float(np.abs(lr - lg).max()),
        "max_abs_feature": float(np.abs(fr - fg).max()),
        "min_cosine_feature": float(cos.min()),
        "decision_agreement": float(((lr > threshold) == (lg > threshold)).mean()),
        "n": len(lr),
    }


def check_fp32(stats: dict, gate: Fp32Gate) -> tuple[bool, list[str]]:
    fails = []
    if stats["max_abs_logit"] > gate.max_abs_logit:
        fails.append(f"max |logit diff| {stats['max_abs_logit']:.3g} > {gate.max_abs_logit:.3g}")
    if stats["decision_agreement"] < gate.min_decision_agreement:
        fails.append(f"decision agreement {stats['decision_agreement']:.4f} < {gate.min_decision_agreement}")
    return not fails, fails
