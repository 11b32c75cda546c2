"""`toolkit threshold`: re-pick a detector artifact's decision threshold on labelled data, with provenance.

The artifact's threshold was fixed on the training run's validation split (balanced accuracy). A deployment
often needs another operating point: a false-positive budget on its own real images (`--target-fpr`), or
the best accuracy on a labelled sample of its traffic (`--best-acc`). The data is scored by the artifact
itself through the prediction path (the engine and precision that will run), the threshold is chosen on
those logits, and the manifest is re-sealed with the new threshold and its provenance: the rule, the data
folder and a hash of exactly the files scored, the engine, the date and the previous value. The threshold
is part of the prediction identity, so `infer --out` refuses to resume old rows under a new threshold.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def data_digest(paths: list[str], root: str | Path) -> str:
    """sha256 over (path relative to root, sha256 of content) of the files scored, in sorted order."""
    from toolkit.io import sha256_file

    h = hashlib.sha256()
    for p in sorted(paths):
        rel = Path(os.path.relpath(p, root)).as_posix()  # not resolved: symlinked files keep their own names
        h.update(f"{rel}\0{sha256_file(p)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def choose(labels: np.ndarray, logits: np.ndarray, rule: str, target_fpr: float | None) -> float:
    from toolkit.evaluation import oracle_threshold, threshold_at_fpr

    if rule == "fpr":
        return threshold_at_fpr(labels, logits, float(target_fpr))
    if rule == "best-acc":
        if labels.min() == labels.max():
            raise ValueError("--best-acc needs both real and generated images")
        return oracle_threshold(labels, logits)[0]
    raise ValueError(f"unknown threshold rule {rule!r} (fpr | best-acc)")


def calibrate_threshold(
    artifact: str | Path,
    data: str | Path,
    target_fpr: float | None = None,
    best_acc: bool = False,
    choice=None,
    batch: int = 32,
    workers: int = 2,
    dry_run: bool = False,
    progress: bool = True,
) -> dict:
    """Score DATA with the artifact, choose the threshold, re-seal the manifest (unless dry_run); -> summary."""
    from toolkit.evaluation import binary_metrics
    from toolkit.pipelines.robustness import labelled_folder, open_scorer, score_folder
    from toolkit.progress import progress_bar

    if (target_fpr is None) == (not best_acc):
        raise ValueError("give exactly one rule: --target-fpr F or --best-acc")
    if target_fpr is not None and not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"--target-fpr must be in [0, 1), got {target_fpr}")
    rule = "fpr" if target_fpr is not None else "best-acc"
    ds = labelled_folder(data)
    with (
        open_scorer(artifact, choice, batch, "toolkit threshold") as scorer,
        progress_bar(f"score {Path(data).name}", len(ds), progress) as advance,
    ):
        s = score_folder(scorer, ds, None, batch, workers, advance)
        engine = scorer.describe
        old = scorer.threshold
        art = scorer.artifact  # opened and verified once, by the scorer
        op = scorer.operating_point
    t = choose(s.labels, s.logits, rule, target_fpr)
    before, after = binary_metrics(s.labels, s.logits, old), binary_metrics(s.labels, s.logits, t)
    provenance = {
        "rule": f"false-positive rate <= {target_fpr:g} on real images" if rule == "fpr" else "best accuracy",
        "target_fpr": target_fpr,
        "data": str(Path(data).resolve()),
        "data_sha256": data_digest(s.paths, data),
        "n_real": int((s.labels == 0).sum()),
        "n_fake": int((s.labels == 1).sum()),
        "skipped": len(s.skipped),
        "scored_by": engine,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous": {"threshold": old, "provenance": art.manifest.get("threshold_provenance")},
        "metrics_on_data": after,
    }
    # the manifest keeps fp32's threshold; a reduced precision's follows it through its sealed operating-point map
    fp32_t = t
    if op:
        from toolkit.evaluation import map_threshold

        provenance["chosen_at"] = {"scored_by": engine, "threshold": t}
        fp32_t = map_threshold(t, op, inverse=True)
    if not dry_run:
        art.update(threshold=fp32_t, threshold_provenance=provenance)
    return {"artifact": str(artifact), "threshold": t, "previous": old, "before": before, "after": after,
            "provenance": provenance, "written": not dry_run, "skipped": s.skipped}  # fmt: skip
