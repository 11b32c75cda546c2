"""Export verification gates: an exported engine against the PyTorch fp32 reference on the same feeds.

Each precision has a gate (a dataclass of configurable bounds); `check` returns the failures with the
numbers, and a failed gate fails the export (no manifest is written).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.evaluation import parity_stats as compare  # one definition, shared with benchmarks/

__all__ = ["GATES", "Fp16Gate", "Fp32Gate", "check", "compare"]


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


GATES = {"fp32": Fp32Gate, "fp16": Fp16Gate}


def check(stats: dict, gate) -> tuple[bool, list[str]]:
    fails = []
    for key, op, bound in gate.bounds():
        v = stats[key]
        if (op == "<=" and v > bound) or (op == ">=" and v < bound):
            fails.append(f"{key} {v:.8g} (gate {op} {bound:.8g})")
    return not fails, fails
