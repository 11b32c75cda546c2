"""One comparator: run engines on the same feeds, compare each with a reference, judge it by a gate.

Polygraphy's Comparator shape: the reference runs once, every candidate runs on the same inputs, the
model kind says what "close" means (`ModelKind.parity`: logits and features for a detector, pixels for
a purifier), and a gate is a dataclass of bounds on those statistics. Export (each precision against
PyTorch fp32), INT8 calibration (int8 against fp32, with labels) and `toolkit bench` all use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass
class Fp32Gate:
    max_abs_logit: float = 1e-4  # max |logit - reference logit|
    min_decision_agreement: float = 1.0  # identical decisions at the threshold

    def bounds(self) -> list[tuple[str, str, float]]:
        return [("max_abs_logit", "<=", self.max_abs_logit), ("decision_agreement", ">=", self.min_decision_agreement)]


@dataclass
class PrecisionGate:
    """One policy for every reduced precision (fp16, bf16, int8): the reduced model against fp32 on the same
    held-out labelled images, each precision at its own operating point (its threshold re-fitted to fp32's
    false-positive rate on those images and sealed in the manifest: `toolkit.evaluation.fpr_matched_map`).

    The defaults are one error budget, the same for every precision (the detector kind's `gate_types`): the task
    does not care which precision spent it. Before, each precision had its own gate and the lossier one got the
    looser gate: ViT-B/16 on an AMX Xeon, bf16 refused at 97.0% decision agreement (its gate: 99.5%) while int8 of
    the same run passed at 92.0% (AUC drop only). Measured on the demo detector (tiny-vit-64, 1000 test images):
    bf16 agrees with fp32 on 98.0% of decisions (AUC drop +0.37), fp16 on 100%, minmax int8 on 94.2% and all-7-bit
    int8 on 93.3% (benchmarks/results/precision_repair.md). 99.5% would refuse that bf16; 95% keeps it and refuses
    both int8 files until `--repair` mends them."""

    max_auc_drop_points: float = 0.5  # AUC(fp32) - AUC(reduced), in points
    max_acc_drop_points: float = 1.0  # accuracy drop, each at its own operating point, in points
    min_decision_agreement: float = 0.95  # same decision at the two operating points
    min_cosine_feature: float = 0.99  # the worst image's feature cosine with fp32

    def bounds(self) -> list[tuple[str, str, float]]:
        return [
            ("auc_drop_points", "<=", self.max_auc_drop_points),
            ("acc_drop_points", "<=", self.max_acc_drop_points),
            ("decision_agreement", ">=", self.min_decision_agreement),
            ("min_cosine_feature", ">=", self.min_cosine_feature),
        ]


# the bounds that need labelled images: without them (export's seeded noise) they are reported as not measured
LABELLED_BOUNDS = ("auc_drop_points", "acc_drop_points")


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


def check(stats: dict, gate, unlabelled_ok: bool = False) -> tuple[bool, list[str]]:
    """-> (passed, the failed bounds with their numbers). `unlabelled_ok`: the bounds that need labelled images
    (LABELLED_BOUNDS) may be missing from `stats` (they are listed by `unmeasured`), every other one must be there."""
    fails = []
    for key, op, bound in gate.bounds():
        v = stats.get(key)
        if v is None and unlabelled_ok and key in LABELLED_BOUNDS:
            continue
        if v is None:
            fails.append(f"{key} not measured (gate {op} {bound:.8g})")
        elif not math.isfinite(v) or (op == "<=" and v > bound) or (op == ">=" and v < bound):  # nan fails
            fails.append(f"{key} {v:.8g} (gate {op} {bound:.8g})")
    return not fails, fails


def unmeasured(stats: dict, gate) -> list[str]:
    return [key for key, _, _ in gate.bounds() if stats.get(key) is None]


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

    def compare(self, candidate, gate=None, engine_name: str = "", refit: bool = False,
                got_threshold: float | None = None) -> dict:  # fmt: skip
        """`candidate`: an open engine or its outputs on the feeds -> {stats, passed, failures, gate, engine}.
        `refit`: judge the candidate at its own operating point, re-fitted on these labelled feeds (a gate that
        seals it: export, calibrate, bf16); `got_threshold`: at the one its artifact sealed (bench)."""
        if self.reference is None:
            raise RuntimeError("Comparator.compare before set_reference")
        got = candidate if isinstance(candidate, dict) else self.outputs(candidate)
        stats = self.kind.parity(self.reference, got, self.threshold, self.labels, refit=refit,
                                 got_threshold=got_threshold)  # fmt: skip
        res = {"stats": stats, "engine": engine_name}
        if gate is not None:
            ok, fails = check(stats, gate, unlabelled_ok=self.labels is None)
            res.update(passed=ok, failures=fails, gate=asdict(gate), unmeasured=unmeasured(stats, gate))
        return res
