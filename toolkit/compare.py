"""One comparator: run engines on the same feeds, compare each with a reference, judge it by a gate.

Polygraphy's Comparator shape: the reference runs once, every candidate runs on the same inputs, the
model kind says what "close" means (`ModelKind.parity`: logits and features for a detector, pixels for
a purifier), and a gate is a dataclass of bounds on those statistics. Export (each precision against
PyTorch fp32), INT8 calibration (int8 against fp32, with labels) and `toolkit bench` all use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np


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
class Int8Gate:
    max_auc_drop_points: float = 0.5  # AUC(reference) - AUC(int8) on held-out labelled images, in points

    def bounds(self) -> list[tuple[str, str, float]]:
        return [("auc_drop_points", "<=", self.max_auc_drop_points)]


@dataclass
class Bf16Gate:
    min_cosine_feature: float = 0.999  # against the same runtime in f32, on held-out labelled images
    min_decision_agreement: float = 0.995
    max_auc_drop_points: float = 0.3

    def bounds(self) -> list[tuple[str, str, float]]:
        return [
            ("min_cosine_feature", ">=", self.min_cosine_feature),
            ("decision_agreement", ">=", self.min_decision_agreement),
            ("auc_drop_points", "<=", self.max_auc_drop_points),
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


def gate_fields(gate) -> list[str]:
    return [f.name for f in fields(gate)]


def check(stats: dict, gate) -> tuple[bool, list[str]]:
    """-> (passed, the failed bounds with their numbers)."""
    fails = []
    for key, op, bound in gate.bounds():
        v = stats.get(key)
        if v is None:
            fails.append(f"{key} not measured (gate {op} {bound:.8g})")
        elif (op == "<=" and v > bound) or (op == ">=" and v < bound):
            fails.append(f"{key} {v:.8g} (gate {op} {bound:.8g})")
    return not fails, fails


def run_feeds(engine, input_name: str, feeds: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every feed through one (open) engine; outputs concatenated along the batch."""
    outs = [engine.infer({input_name: x}) for x in feeds]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


class Comparator:
    """The reference's outputs on `feeds`, and each candidate's statistics (and gate verdict) against them."""

    def __init__(self, kind, feeds: list[np.ndarray], threshold: float | None = None, labels=None):
        self.kind, self.feeds, self.threshold, self.labels = kind, feeds, threshold, labels
        self.reference: dict[str, np.ndarray] | None = None

    def set_reference(self, engine) -> dict[str, np.ndarray]:
        self.reference = self.outputs(engine)
        return self.reference

    def outputs(self, engine) -> dict[str, np.ndarray]:
        return run_feeds(engine, self.kind.input_name, self.feeds)

    def run(self, open_engine) -> dict[str, np.ndarray]:
        """Outputs of the engine `open_engine()` makes, on the feeds; the engine (its weights) is released on return,
        before the next one loads. A `with` block leaves its name bound: the fp32 and int8 sessions of a ViT-L/14
        calibration were both alive, 8.0 GiB of its peak."""
        with open_engine() as engine:
            return self.outputs(engine)

    def compare(self, candidate, gate=None, engine_name: str = "") -> dict:
        """`candidate`: an open engine or its outputs on the feeds -> {stats, passed, failures, gate, engine}."""
        if self.reference is None:
            raise RuntimeError("Comparator.compare before set_reference")
        got = candidate if isinstance(candidate, dict) else self.outputs(candidate)
        stats = self.kind.parity(self.reference, got, self.threshold, self.labels)
        res = {"stats": stats, "engine": engine_name}
        if gate is not None:
            ok, fails = check(stats, gate)
            res.update(passed=ok, failures=fails, gate=asdict(gate))
        return res
