"""toolkit/compare.py: every gate's defaults and bounds, `check` at, just past and around each bound (NaN,
infinity, missing, unlabelled), and the Comparator's contract with a recording kind and engines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.compare import (
    LABELLED_BOUNDS,
    Comparator,
    Fp32Gate,
    ImageFp16Gate,
    ImageFp32Gate,
    PrecisionGate,
    check,
    gate_fields,
    run_feeds,
    unmeasured,
)


def test_gate_defaults_are_the_documented_policy():
    """Bugs: a default moved (the README and the issue quote these numbers) or a bound's direction flipped."""
    assert PrecisionGate().bounds() == [
        ("auc_drop_points", "<=", 0.5),
        ("acc_drop_points", "<=", 1.0),
        ("decision_agreement", ">=", 0.95),
        ("min_cosine_feature", ">=", 0.99),
    ]
    assert Fp32Gate().bounds() == [("max_abs_logit", "<=", 1e-4), ("decision_agreement", ">=", 1.0)]
    assert ImageFp32Gate().bounds() == [("max_abs_pixel", "<=", 1e-4)]
    assert ImageFp16Gate().bounds() == [("min_psnr_db", ">=", 40.0)]
    assert gate_fields(PrecisionGate()) == [
        "max_auc_drop_points",
        "max_acc_drop_points",
        "min_decision_agreement",
        "min_cosine_feature",
    ]
    assert LABELLED_BOUNDS == ("auc_drop_points", "acc_drop_points")
    g = PrecisionGate(
        max_auc_drop_points=0.1, max_acc_drop_points=2, min_decision_agreement=0.9, min_cosine_feature=0.5
    )
    assert [b for _, _, b in g.bounds()] == [0.1, 2, 0.9, 0.5]
    assert ImageFp16Gate(min_psnr_db=30).bounds()[0][2] == 30 and ImageFp32Gate(max_abs_pixel=1).bounds()[0][2] == 1
    assert Fp32Gate(max_abs_logit=2, min_decision_agreement=0.5).bounds()[1][2] == 0.5


PASSING = {"auc_drop_points": 0.5, "acc_drop_points": 1.0, "decision_agreement": 0.95, "min_cosine_feature": 0.99}


def test_check_passes_exactly_at_every_bound():
    """Bug: a bound made strict (< for <=, > for >=)."""
    assert check(dict(PASSING), PrecisionGate()) == (True, [])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("auc_drop_points", 0.5000001, "auc_drop_points 0.5000001 (gate <= 0.5)"),
        ("acc_drop_points", 1.01, "acc_drop_points 1.01 (gate <= 1)"),
        ("decision_agreement", 0.9499, "decision_agreement 0.9499 (gate >= 0.95)"),
        ("min_cosine_feature", 0.98999, "min_cosine_feature 0.98999 (gate >= 0.99)"),
        ("decision_agreement", math.nan, "decision_agreement nan (gate >= 0.95)"),
        ("auc_drop_points", math.nan, "auc_drop_points nan (gate <= 0.5)"),
        ("min_cosine_feature", math.inf, "min_cosine_feature inf (gate >= 0.99)"),
        ("auc_drop_points", -math.inf, "auc_drop_points -inf (gate <= 0.5)"),
    ],
)
def test_check_fails_one_bound_alone(key, value, message):
    """Bugs: any one bound skipped, compared the wrong way, a NaN or infinity passing, or the message garbled."""
    ok, fails = check({**PASSING, key: value}, PrecisionGate())
    assert (ok, fails) == (False, [message])


def test_check_lists_every_failure_in_bound_order():
    """Bug: check stopping at the first failure."""
    stats = {"auc_drop_points": 3.0, "acc_drop_points": 2.0, "decision_agreement": 0.5, "min_cosine_feature": 0.1}
    ok, fails = check(stats, PrecisionGate())
    assert not ok and [f.split()[0] for f in fails] == list(stats)


def test_missing_statistics_and_unlabelled_feeds():
    """Bugs: a missing statistic passing, `unlabelled_ok` excusing more than the labelled bounds (or not them)."""
    stats = {"decision_agreement": 1.0, "min_cosine_feature": 1.0}
    ok, fails = check(stats, PrecisionGate())
    assert not ok and fails == [
        "auc_drop_points not measured (gate <= 0.5)",
        "acc_drop_points not measured (gate <= 1)",
    ]
    assert check(stats, PrecisionGate(), unlabelled_ok=True) == (True, [])
    ok, fails = check({"auc_drop_points": 0.0}, PrecisionGate(), unlabelled_ok=True)
    assert fails == ["decision_agreement not measured (gate >= 0.95)", "min_cosine_feature not measured (gate >= 0.99)"]
    assert check({"auc_drop_points": 0.9, **stats}, PrecisionGate(), unlabelled_ok=True)[0] is False  # measured: judged
    assert check({**stats, "acc_drop_points": None}, PrecisionGate(), unlabelled_ok=True) == (True, [])
    assert unmeasured(stats, PrecisionGate()) == ["auc_drop_points", "acc_drop_points"]
    assert unmeasured({**PASSING, "decision_agreement": None}, PrecisionGate()) == ["decision_agreement"]
    assert unmeasured(PASSING, PrecisionGate()) == []


def test_image_gates():
    """Bugs: the purifier's gates compared the wrong way."""
    assert check({"max_abs_pixel": 1e-4}, ImageFp32Gate()) == (True, [])
    assert check({"max_abs_pixel": 2e-4}, ImageFp32Gate()) == (False, ["max_abs_pixel 0.0002 (gate <= 0.0001)"])
    assert check({"min_psnr_db": 40.0}, ImageFp16Gate()) == (True, [])
    assert check({"min_psnr_db": 39.9}, ImageFp16Gate()) == (False, ["min_psnr_db 39.9 (gate >= 40)"])


class _Engine:
    def __init__(self, scale: float):
        self.scale, self.calls, self.closed = scale, [], False

    def infer(self, feeds):
        (x,) = feeds.values()
        self.calls.append(list(feeds))
        return {"logit": x.sum(1) * self.scale, "feature": x * self.scale}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


class _Kind:
    input_name = "pixels"

    def __init__(self):
        self.seen = []

    def parity(self, ref, got, threshold, labels, refit=False, got_threshold=None):
        self.seen.append((ref, got, threshold, labels, refit, got_threshold))
        diff = float(np.abs(ref["logit"] - got["logit"]).max())
        return {"max_abs_logit": diff, "decision_agreement": 1.0}


def test_run_feeds_concatenates_every_feed_under_the_input_name():
    """Bugs: a feed dropped, outputs not concatenated along the batch, or the input under another name."""
    e = _Engine(2.0)
    feeds = [np.ones((2, 3)), np.full((1, 3), 2.0)]
    out = run_feeds(e, "pixels", feeds)
    assert e.calls == [["pixels"], ["pixels"]]
    assert out["logit"].tolist() == [6.0, 6.0, 12.0] and out["feature"].shape == (3, 3)


def test_comparator_contract():
    """Bugs: compare before a reference not refused, the kind given the wrong arguments, the gate's verdict or
    `unmeasured` missing, labels not switching `unlabelled_ok`, or an engine left open after `run`."""
    kind = _Kind()
    feeds = [np.ones((2, 3))]
    comp = Comparator(kind, feeds, threshold=0.25, labels=None)
    with pytest.raises(RuntimeError, match="before set_reference"):
        comp.compare(_Engine(1.0))
    ref = comp.set_reference(_Engine(1.0))
    assert comp.reference is ref and ref["logit"].tolist() == [3.0, 3.0]
    res = comp.compare(_Engine(1.0), Fp32Gate(), engine_name="onnxruntime", refit=True, got_threshold=0.5)
    assert res["passed"] is True and res["failures"] == [] and res["engine"] == "onnxruntime"
    assert res["gate"] == {"max_abs_logit": 1e-4, "min_decision_agreement": 1.0} and res["unmeasured"] == []
    _, got, threshold, labels, refit, got_t = kind.seen[-1]
    assert got["logit"].tolist() == [3.0, 3.0] and (threshold, labels, refit, got_t) == (0.25, None, True, 0.5)
    res = comp.compare({"logit": np.array([3.0, 3.5]), "feature": np.ones((2, 3))}, Fp32Gate())
    assert res["passed"] is False and res["failures"] == ["max_abs_logit 0.5 (gate <= 0.0001)"]
    assert kind.seen[-1][4:] == (False, None)
    assert set(comp.compare(_Engine(1.0))) == {"stats", "engine"}  # no gate: statistics only
    e = _Engine(1.0)
    assert comp.run(lambda: e)["logit"].tolist() == [3.0, 3.0] and e.closed
    assert comp.outputs(_Engine(0.5))["logit"].tolist() == [1.5, 1.5]

    # labelled: the labelled bounds must be measured; unlabelled: they may be missing
    stats_kind = _Kind()
    stats_kind.parity = lambda *a, **k: {"decision_agreement": 1.0, "min_cosine_feature": 1.0}
    unlabelled = Comparator(stats_kind, feeds)
    unlabelled.set_reference(_Engine(1.0))
    assert unlabelled.compare(_Engine(1.0), PrecisionGate())["passed"] is True
    labelled = Comparator(stats_kind, feeds, labels=np.array([0, 1]))
    labelled.set_reference(_Engine(1.0))
    res = labelled.compare(_Engine(1.0), PrecisionGate())
    assert res["passed"] is False and res["unmeasured"] == ["auc_drop_points", "acc_drop_points"]
    # the labels reach the kind's parity (bug: a labelled comparison computed without them, its AUC unmeasured)
    recorded = Comparator(kind, feeds, threshold=0.25, labels=np.array([0, 1]))
    recorded.set_reference(_Engine(1.0))
    recorded.compare(_Engine(1.0))
    assert kind.seen[-1][3].tolist() == [0, 1]
