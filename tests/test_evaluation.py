"""toolkit/evaluation.py against references computed here: metrics by hand on a small set, the oracle and FPR
thresholds by brute force over every cut, the operating-point map by its definition (matched quantiles), and the
per-generator report and its tables on a set whose every figure is known."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.data.folders import UNNAMED
from toolkit.evaluation import (
    MAP_POINTS,
    binary_metrics,
    fpr_matched_map,
    map_threshold,
    markdown_table,
    oracle_threshold,
    per_generator_report,
    rich_table,
    threshold_at_fpr,
)


def test_binary_metrics_by_hand():
    """Bugs: the decision taken as >= instead of >, accuracies per class swapped, AP or AUC replaced."""
    labels = np.array([0, 0, 0, 1, 1])
    logits = np.array([-1.0, 0.5, 2.0, 0.5, 3.0])
    m = binary_metrics(labels, logits, 0.5)  # predicted fake: 2.0, 3.0 (0.5 is not > 0.5)
    assert (m["n_real"], m["n_fake"]) == (3, 2)
    assert m["acc_real"] == pytest.approx(2 / 3) and m["acc_fake"] == pytest.approx(1 / 2)
    assert m["acc"] == pytest.approx(3 / 5)
    # AUC: pairs (fake > real) counting ties as 1/2: fake 0.5 beats -1, ties 0.5, loses to 2; fake 3 beats all
    assert m["auc"] == pytest.approx((1 + 0.5 + 0 + 3) / 6)
    # AP: ranked 3(f) 2(r) 0.5(f,r tie) -1(r); precision at the recall steps: 1/1, then 2/4 at the tied pair
    assert m["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)


def test_binary_metrics_with_one_class_or_none():
    """Bugs: AP/AUC computed (or crashing) with one class; accuracy of an empty class not None."""
    m = binary_metrics(np.array([1, 1]), np.array([0.2, -0.2]), 0.0)
    assert m["acc_real"] is None and m["acc_fake"] == 0.5 and m["ap"] is None and m["auc"] is None
    m = binary_metrics(np.array([0]), np.array([0.2]), 0.0)
    assert m["acc_fake"] is None and m["acc_real"] == 0.0 and m["acc"] == 0.0 and m["auc"] is None
    m = binary_metrics(np.array([], int), np.array([]), 0.0)
    assert m["acc"] is None and m["n_real"] == 0 and m["n_fake"] == 0


def _brute_oracle(labels, logits):
    cuts = sorted({v - 1.0 for v in logits} | {v + 1.0 for v in logits} | set(logits))
    mids = [(a + b) / 2 for a, b in zip(sorted(set(logits)), sorted(set(logits))[1:], strict=False)]
    return max(float(np.mean((logits > t) == labels)) for t in cuts + mids)


@pytest.mark.parametrize("seed", range(6))
def test_oracle_threshold_is_the_best_cut(seed):
    """Bugs: the count of correct items off by one, ties split, or the cut placed outside its gap."""
    rng = np.random.default_rng(seed)
    n = 3 + seed * 4
    logits = np.round(rng.normal(size=n), 1)  # rounding makes ties
    labels = (rng.random(n) < 0.5).astype(int)
    t, acc = oracle_threshold(labels, logits)
    assert acc == pytest.approx(_brute_oracle(labels, logits))
    assert float(np.mean((logits > t) == labels)) == pytest.approx(acc)  # the threshold reaches it
    assert not np.any(np.isclose(logits, t))  # it falls between values, never on one


def test_oracle_threshold_by_hand():
    """Bugs: the extreme cuts (everything fake / everything real) moved, or the midpoint not taken."""
    assert oracle_threshold(np.array([0, 0, 1]), np.array([1.0, 2.0, 3.0])) == (2.5, 1.0)
    assert oracle_threshold(np.array([1, 1]), np.array([1.0, 2.0])) == (0.0, 1.0)
    assert oracle_threshold(np.array([0, 0]), np.array([1.0, 2.0])) == (3.0, 1.0)
    with pytest.raises(ValueError, match="at least one item"):
        oracle_threshold(np.array([], int), np.array([]))


@pytest.mark.parametrize("fpr", [0.0, 0.1, 0.25, 0.5, 0.99, 1.0])
def test_threshold_at_fpr_is_the_lowest_within_budget(fpr):
    """Bugs: one real too many or too few allowed above, the budget's rounding moved, the wrong class used."""
    rng = np.random.default_rng(4)
    logits = np.round(rng.normal(size=40), 1)
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    t = threshold_at_fpr(labels, logits, fpr)
    real = logits[labels == 0]
    assert np.mean(real > t) <= fpr + 1e-12
    lower = [c for c in np.r_[real, real.min() - 1.0] if c < t]  # every lower candidate breaks the budget
    assert all(np.mean(real > c) > fpr + 1e-12 for c in lower)


def test_threshold_at_fpr_by_hand():
    """Bugs: the all-reals-allowed case not below the lowest real, or no refusal without reals."""
    labels, logits = np.array([0, 0, 0, 0, 1]), np.array([4.0, 3.0, 2.0, 1.0, 9.0])
    assert threshold_at_fpr(labels, logits, 0.25) == 3.0  # only 4.0 above it
    assert threshold_at_fpr(labels, logits, 0.0) == 4.0
    assert threshold_at_fpr(labels, logits, 1.0) == 0.0  # lowest real - 1
    with pytest.raises(ValueError, match="needs real"):
        threshold_at_fpr(np.array([1]), np.array([0.0]), 0.1)


def test_fpr_matched_map_keeps_every_real_when_few():
    """Bugs: fake images included, the lists not sorted, or a field dropped."""
    labels = np.array([0, 1, 0, 0, 1])
    m = fpr_matched_map(labels, np.array([3.0, 9.0, 1.0, 2.0, 9.0]), np.array([30.0, -5.0, 10.0, 20.0, 0.0]))
    assert m["fp32"] == [1.0, 2.0, 3.0] and m["reduced"] == [10.0, 20.0, 30.0] and m["n_real"] == 3
    assert m["rule"] == "fp32's false-positive rate on the gate's real images"
    with pytest.raises(ValueError, match="at least two real"):
        fpr_matched_map(np.array([0, 1]), np.array([1.0, 2.0]), np.array([1.0, 2.0]))


def test_fpr_matched_map_takes_quantiles_when_many():
    """Bugs: the cap on points moved, or the quantiles not matched between the two precisions."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=1000)
    labels = np.zeros(1000, int)
    m = fpr_matched_map(labels, ref, 2 * ref + 1)
    assert len(m["fp32"]) == len(m["reduced"]) == MAP_POINTS == 257 and m["n_real"] == 1000
    assert m["fp32"][0] == ref.min() and m["fp32"][-1] == ref.max()
    assert np.allclose(np.array(m["reduced"]), 2 * np.array(m["fp32"]) + 1)
    assert m["fp32"][128] == pytest.approx(np.median(ref))
    exact = fpr_matched_map(np.zeros(257, int), ref[:257], ref[:257])
    assert exact["fp32"] == sorted(ref[:257].tolist())


def test_map_threshold_interpolates_extrapolates_and_inverts():
    """Bugs: the ends not extended by a shift, the inverse not swapping the axes, or ties breaking np.interp."""
    m = {"fp32": [0.0, 1.0, 2.0, 2.0, 4.0], "reduced": [10.0, 12.0, 14.0, 15.0, 18.0]}
    assert map_threshold(0.5, m) == pytest.approx(11.0)
    assert map_threshold(2.0, m) == pytest.approx(14.0)  # the first of the tied pairs
    assert map_threshold(3.0, m) == pytest.approx(16.0)
    assert map_threshold(-1.0, m) == pytest.approx(9.0)  # below: shifted as the lower end
    assert map_threshold(5.5, m) == pytest.approx(19.5)  # above: shifted as the upper end
    assert map_threshold(4.0, m) == pytest.approx(18.0) and map_threshold(0.0, m) == pytest.approx(10.0)
    strict = {"fp32": [0.0, 1.0, 2.0, 4.0], "reduced": [10.0, 12.0, 14.0, 18.0]}  # round trips need no ties
    for t in (-1.0, 0.25, 1.5, 3.0, 6.0):
        assert map_threshold(map_threshold(t, strict), strict, inverse=True) == pytest.approx(t)
    assert map_threshold(11.0, m, inverse=True) == pytest.approx(0.5)


def _report():
    gens = ["sd/v1", "sd/v2", "gan", "gan", "real", "real", "mj", "mj"]
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    logits = np.array([2.0, -1.0, 3.0, -2.0, -1.0, 1.0, 0.5, -0.5])
    return per_generator_report(labels, logits, gens, 0.0, ["sd/v9", "real"])


def test_per_generator_report():
    """Bugs: generators not grouped at the top level, seen/unseen swapped, or the unseen mean over the wrong rows."""
    r = _report()
    assert r["threshold"] == 0.0 and r["train_generators"] == ["real", "sd"]
    assert list(r["generators"]) == ["gan", "mj", "real", "sd"]
    sd, gan, mj, real = (r["generators"][g] for g in ("sd", "gan", "mj", "real"))
    assert sd["seen_in_training"] is True and real["seen_in_training"] is True
    assert gan["seen_in_training"] is False and mj["seen_in_training"] is False
    assert (sd["n_fake"], sd["acc_fake"]) == (2, 0.5)
    assert gan["acc"] == 1.0 and gan["auc"] == 1.0 and mj["acc"] == 1.0
    assert r["mean_unseen"]["acc"] == 1.0 and r["mean_unseen"]["auc"] == 1.0
    assert r["mean_unseen"]["acc_real"] == 1.0  # both unseen generators have a real image, both right
    assert r["overall"] == binary_metrics(
        np.array([1, 1, 1, 0, 0, 0, 1, 0]), np.array([2.0, -1.0, 3.0, -2.0, -1.0, 1.0, 0.5, -0.5]), 0.0
    )


def test_a_flat_folder_is_neither_seen_nor_unseen():
    """Bug: the unnamed generator counted as unseen (it would enter the unseen mean)."""
    r = per_generator_report(np.array([0, 1]), np.array([-1.0, 1.0]), [UNNAMED, UNNAMED], 0.0, [])
    assert r["generators"][UNNAMED]["seen_in_training"] is None
    assert r["mean_unseen"] == {m: None for m in ("acc_real", "acc_fake", "acc", "ap", "auc")}


def test_markdown_and_rich_tables():
    """Bugs: a method or generator row dropped, the seen column wrong, or the percentages mis-scaled."""
    r = _report()
    md = markdown_table({"fp32": r, "int8": r})
    lines = md.splitlines()
    assert lines[0] == "| generator | seen | method | acc real | acc fake | acc | AP | AUC |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert "| gan | unseen | fp32 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in lines
    assert "| sd | train | int8 | - | 50.0 | 50.0 | - | - |" in lines
    assert "| **mean unseen** | | int8 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in lines
    assert len(lines) == 2 + 4 * 2 + 2 and md.endswith("\n")
    flat = markdown_table({"m": per_generator_report(np.array([0]), np.array([0.0]), [UNNAMED], 0.0, [])})
    assert f"| {UNNAMED} | - | m | 100.0 | - | 100.0 | - | - |" in flat.splitlines()
    from rich.console import Console

    console = Console(width=100, record=True, color_system="standard", force_terminal=True)
    console.print(rich_table({"fp32": r}, title="T"))
    # the whole rendering: column names, their alignment (names left, figures right), one section per generator
    assert console.export_text(clear=False) == RICH_TABLE
    styled = console.export_text(styles=True)
    assert "\x1b[1m" in styled.splitlines()[-2] and "\x1b[1m" not in styled.splitlines()[4]  # the mean row is bold
    assert "\x1b[3m" in styled.splitlines()[0]  # the title


RICH_TABLE = (
    " " * 39
    + "T"
    + " " * 39
    + "\n"
    + """\
┏━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━┳━━━━━━━┳━━━━━━━┓
┃ generator   ┃ seen   ┃ method ┃ acc real ┃ acc fake ┃   acc ┃    AP ┃   AUC ┃
┡━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━╇━━━━━━━╇━━━━━━━┩
│ gan         │ unseen │ fp32   │    100.0 │    100.0 │ 100.0 │ 100.0 │ 100.0 │
├─────────────┼────────┼────────┼──────────┼──────────┼───────┼───────┼───────┤
│ mj          │ unseen │ fp32   │    100.0 │    100.0 │ 100.0 │ 100.0 │ 100.0 │
├─────────────┼────────┼────────┼──────────┼──────────┼───────┼───────┼───────┤
│ real        │ train  │ fp32   │     50.0 │        - │  50.0 │     - │     - │
├─────────────┼────────┼────────┼──────────┼──────────┼───────┼───────┼───────┤
│ sd          │ train  │ fp32   │        - │     50.0 │  50.0 │     - │     - │
├─────────────┼────────┼────────┼──────────┼──────────┼───────┼───────┼───────┤
│ mean unseen │        │ fp32   │    100.0 │    100.0 │ 100.0 │ 100.0 │ 100.0 │
└─────────────┴────────┴────────┴──────────┴──────────┴───────┴───────┴───────┘
"""
)


def test_oracle_never_cuts_inside_a_tie_and_its_last_cut_is_above_everything():
    """Bugs: ties split by the cut (here that would claim 100% by separating two equal logits), or the
    everything-real cut placed above the second value instead of the last."""
    assert oracle_threshold(np.array([0, 0, 1]), np.array([0.0, 1.0, 1.0]))[1] == pytest.approx(2 / 3)
    assert oracle_threshold(np.array([0, 1, 0, 1]), np.array([0.0, 2.0, 2.0, 2.0]))[1] == pytest.approx(3 / 4)
    assert oracle_threshold(np.array([0, 0, 0]), np.array([1.0, 2.0, 3.0])) == (4.0, 1.0)


def test_refusal_messages_are_exact():
    with pytest.raises(ValueError, match=r"^an oracle threshold needs at least one item$"):
        oracle_threshold(np.array([], int), np.array([]))
    with pytest.raises(ValueError, match=r"^a false-positive-rate threshold needs real \(label 0\) images$"):
        threshold_at_fpr(np.array([1]), np.array([0.0]), 0.1)
    with pytest.raises(ValueError, match=r"^an operating-point map needs at least two real \(label 0\) images$"):
        fpr_matched_map(np.array([0, 1]), np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    m = fpr_matched_map(np.array([0, 0]), np.array([2.0, 1.0]), np.array([5.0, 3.0]))  # two reals are enough
    assert m["fp32"] == [1.0, 2.0] and m["reduced"] == [3.0, 5.0]


def test_a_method_without_a_generator_does_not_hide_the_next_methods_row():
    """Bug: the loop over methods stopping (`break`) at the first method that lacks a generator."""
    a = per_generator_report(np.array([0, 1]), np.array([-1.0, 1.0]), ["x", "x"], 0.0, [])
    b = per_generator_report(np.array([0, 1, 0, 1]), np.array([-1.0, 1.0, -1.0, 1.0]), ["x", "x", "y", "y"], 0.0, [])
    lines = markdown_table({"first": a, "second": b}).splitlines()
    assert "| y | unseen | second | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in lines
    assert not any(line.startswith("| y | unseen | first") for line in lines)


def test_rich_table_default_title():
    assert rich_table({"m": _report()}).title == "per-generator results (%)"
