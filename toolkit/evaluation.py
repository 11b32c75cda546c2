"""Honest detector evaluation: real and generated accuracy separately, AP, AUC, per generator.

The threshold is an input (fixed on validation data before the test set is read); generators seen
in training are marked and kept out of the unseen average.
"""

from __future__ import annotations

import numpy as np

from toolkit.data.folders import UNNAMED, top_generator

METRICS = ("acc_real", "acc_fake", "acc", "ap", "auc")


def binary_metrics(labels: np.ndarray, logits: np.ndarray, threshold: float) -> dict:
    """labels (N,) in {0, 1}, logits (N,); prediction = logit > threshold. AP/AUC None for one class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    logits = np.asarray(logits, dtype=np.float64)
    pred = (logits > threshold).astype(int)
    real, fake = labels == 0, labels == 1
    both = real.any() and fake.any()
    return {
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
        "acc_real": float((pred[real] == 0).mean()) if real.any() else None,
        "acc_fake": float((pred[fake] == 1).mean()) if fake.any() else None,
        "acc": float((pred == labels).mean()) if len(labels) else None,
        "ap": float(average_precision_score(labels, logits)) if both else None,
        "auc": float(roc_auc_score(labels, logits)) if both else None,
    }


def oracle_threshold(labels: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) of the threshold with the best plain accuracy on these very labels.

    An oracle: it reads the labels it is judged on, so it bounds what re-thresholding could give and is
    never a deployable figure (robustness tables print it in its own, labelled column)."""
    labels = np.asarray(labels).astype(int)
    z = np.asarray(logits, dtype=np.float64)
    if not len(z):
        raise ValueError("an oracle threshold needs at least one item")
    order = np.argsort(z, kind="stable")
    zs, ys = z[order], labels[order]
    # threshold below everything: all predicted fake; moving it past item i flips item i to "real"
    correct = np.concatenate([[ys.sum()], ys.sum() + np.cumsum(np.where(ys == 0, 1, -1))])
    # only cut between distinct values (ties move together)
    valid = np.concatenate([[True], np.r_[zs[1:] != zs[:-1], True]])
    correct = np.where(valid, correct, -1)
    k = int(np.argmax(correct))
    cuts = np.concatenate([[zs[0] - 1.0], (zs[:-1] + zs[1:]) / 2, [zs[-1] + 1.0]])
    return float(cuts[k]), float(correct[k] / len(zs))


def threshold_at_fpr(labels: np.ndarray, logits: np.ndarray, target_fpr: float) -> float:
    """The lowest logit threshold whose false-positive rate on the real items is <= target_fpr
    (decision: logit > threshold). Lowest, so the fake recall is the highest the FPR budget allows."""
    labels = np.asarray(labels).astype(int)
    real = np.sort(np.asarray(logits, dtype=np.float64)[labels == 0])[::-1]  # descending
    if not len(real):
        raise ValueError("a false-positive-rate threshold needs real (label 0) images")
    k = int(np.floor(target_fpr * len(real) + 1e-9))  # reals allowed above the threshold
    if k >= len(real):
        return float(real[-1] - 1.0)
    return float(real[k])  # at most k reals are strictly above it; any lower threshold lets k + 1 through


MAP_POINTS = 257  # quantile pairs kept in a sealed operating-point map (every real image when there are fewer)


def fpr_matched_map(labels: np.ndarray, ref_logits: np.ndarray, got_logits: np.ndarray) -> dict:
    """The operating-point map of a reduced precision: matched quantiles of the real images' logits under fp32
    (`ref`) and under the reduced precision (`got`). `map_threshold(t, m)` is then the reduced precision's
    threshold with fp32's false-positive rate at `t` on these images: a logit scale shifted by quantisation is
    not counted as disagreement, and a later `toolkit threshold` moves every precision's threshold with fp32's."""
    labels = np.asarray(labels).astype(int)
    a = np.sort(np.asarray(ref_logits, dtype=np.float64)[labels == 0])
    b = np.sort(np.asarray(got_logits, dtype=np.float64)[labels == 0])
    if len(a) < 2:
        raise ValueError("an operating-point map needs at least two real (label 0) images")
    if len(a) > MAP_POINTS:
        q = np.linspace(0.0, 1.0, MAP_POINTS)
        a, b = np.quantile(a, q), np.quantile(b, q)
    return {"rule": "fp32's false-positive rate on the gate's real images", "n_real": int((labels == 0).sum()),
            "fp32": [float(v) for v in a], "reduced": [float(v) for v in b]}  # fmt: skip


def map_threshold(t: float, m: dict, inverse: bool = False) -> float:
    """fp32 threshold `t` -> the reduced precision's (`inverse`: back); beyond the map's ends, shifted as its end."""
    a, b = np.asarray(m["fp32"]), np.asarray(m["reduced"])
    if inverse:
        a, b = b, a
    a, first = np.unique(a, return_index=True)  # ties: the first pair of each (np.interp needs increasing xp)
    b = b[first]
    if t <= a[0]:
        return float(t - a[0] + b[0])
    if t >= a[-1]:
        return float(t - a[-1] + b[-1])
    return float(np.interp(t, a, b))


def per_generator_report(
    labels: np.ndarray,
    logits: np.ndarray,
    generators: list[str],
    threshold: float,
    train_generators: list[str],
) -> dict:
    """Metrics per top-level generator, plus the mean over generators unseen in training."""
    labels, logits = np.asarray(labels), np.asarray(logits)
    tops = np.array([top_generator(g) for g in generators])
    seen = {top_generator(g) for g in train_generators}
    rows = {}
    for g in sorted(set(tops)):
        sel = tops == g
        known = None if g == UNNAMED else g in seen  # a flat folder names no generator: neither seen nor unseen
        rows[g] = {"seen_in_training": known, **binary_metrics(labels[sel], logits[sel], threshold)}
    unseen = [r for r in rows.values() if r["seen_in_training"] is False]
    mean_unseen = {}
    for m in METRICS:
        vals = [r[m] for r in unseen if r[m] is not None]
        mean_unseen[m] = float(np.mean(vals)) if vals else None
    return {
        "threshold": float(threshold),
        "train_generators": sorted(seen),
        "generators": rows,
        "mean_unseen": mean_unseen,
        "overall": binary_metrics(labels, logits, threshold),
    }


def _seen(row: dict) -> str:
    return {True: "train", False: "unseen", None: "-"}[row["seen_in_training"]]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown_table(reports: dict[str, dict]) -> str:
    """One row per (generator, method): reports maps a method name to `per_generator_report` output."""
    methods = list(reports)
    gens = sorted({g for r in reports.values() for g in r["generators"]})
    head = "| generator | seen | method | acc real | acc fake | acc | AP | AUC |"
    lines = [head, "|" + "---|" * 8]
    for g in gens:
        for m in methods:
            row = reports[m]["generators"].get(g)
            if row is None:
                continue
            seen = _seen(row)
            vals = " | ".join(_pct(row[k]) for k in METRICS)
            lines.append(f"| {g} | {seen} | {m} | {vals} |")
    for m in methods:
        mu = reports[m]["mean_unseen"]
        lines.append(f"| **mean unseen** | | {m} | " + " | ".join(_pct(mu[k]) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def rich_table(reports: dict[str, dict], title: str = "per-generator results (%)"):
    from rich.table import Table

    t = Table(title=title)
    for c in ("generator", "seen", "method", "acc real", "acc fake", "acc", "AP", "AUC"):
        t.add_column(c, justify="left" if c in ("generator", "seen", "method") else "right")
    gens = sorted({g for r in reports.values() for g in r["generators"]})
    for g in gens:
        for m, r in reports.items():
            row = r["generators"].get(g)
            if row:
                t.add_row(g, _seen(row), m, *(_pct(row[k]) for k in METRICS))
        t.add_section()
    for m, r in reports.items():
        t.add_row("mean unseen", "", m, *(_pct(r["mean_unseen"][k]) for k in METRICS), style="bold")
    return t
