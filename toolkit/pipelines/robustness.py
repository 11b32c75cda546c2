"""Detector scores on a labelled folder, clean or perturbed, from a run (PyTorch) or an artifact (any engine).

One scorer per target: a run directory scores through its kind's PyTorch reference (the deployed graph:
encoder -> normalise -> folded head), an artifact through the one prediction path with an engine choice,
so `toolkit eval --perturb` judges exactly what `toolkit infer` would run. Images are decoded in worker
processes and perturbed there (toolkit/perturb.py) before the model's own preprocessing.

The robustness matrix (`robustness_matrix`) has one row per perturbation: accuracy on real and generated
images, accuracy, AP and AUC at the target's fixed threshold (overall and mean over generators unseen in
training), plus the oracle best-threshold accuracy on the same images, in a separate column and labelled
as an oracle: it reads the test labels, so it shows how much of a drop is a shifted threshold rather than
lost ranking, and is never a deployable figure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.data.folders import LabelledImages
from toolkit.data.images import Skipped
from toolkit.perturb import IDENTITY, Perturbation


@dataclass
class Scorer:
    """What scores images: preprocessed batch (N, 3, S, S) -> logits (N,), with the decision it is judged at."""

    target: str
    preprocess: dict
    threshold: float
    train_generators: list[str] | None  # None when the target does not record them
    logits: Callable[[np.ndarray], np.ndarray]
    describe: str = ""
    artifact: object = None  # the opened Artifact when the target is one (callers use it instead of re-opening)
    operating_point: dict | None = None  # the map from fp32's threshold to `threshold` (a reduced precision's)


@dataclass
class Scores:
    logits: np.ndarray
    labels: np.ndarray
    generators: list[str]
    paths: list[str]
    skipped: list[Skipped] = field(default_factory=list)


def is_artifact(target: str | Path) -> bool:
    from toolkit.artifact import MANIFEST

    return (Path(target) / MANIFEST).is_file()


def _train_generators_of(run_dir: Path) -> list[str] | None:
    from toolkit.io import read_json

    cfg = run_dir / "config.json"
    if cfg.is_file():
        gens = read_json(cfg).get("train_generators")
        return list(gens) if gens is not None else None
    return None


@contextlib.contextmanager
def open_scorer(target: str | Path, choice=None, batch: int = 32, what: str = "scoring") -> Iterator[Scorer]:
    """A run directory (PyTorch reference) or an artifact (prediction path with `choice`, an EngineChoice)."""
    from toolkit import kinds

    target = Path(target)
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is not a directory (want a run from 'toolkit train' or an artifact)")
    if is_artifact(target):
        from toolkit.artifact import Artifact
        from toolkit.predict import PredictionPath

        art = Artifact.open(target)
        kinds.for_artifact(art).require("detects", what)
        gens = art.manifest.get("model_config", {}).get("train_generators")
        if gens is None:  # artifacts exported before train_generators was recorded: their source run knows
            gens = _train_generators_of(Path(art.manifest.get("source_run", "")))
        with PredictionPath(art, None, choice, batch) as path:
            yield Scorer(
                str(target),
                art.preprocess,
                float(path.threshold),
                gens,
                lambda x: path.run(x)["logit"],
                describe=f"{path.choice.engine} {path.choice.precision}",
                artifact=art,
                operating_point=path.operating_point,
            )
        return
    import torch

    from toolkit.io import read_json

    kind = kinds.for_run(target)
    kind.require("detects", what)
    config = read_json(target / "config.json")
    model = kind.load_reference(target)

    @torch.no_grad()
    def logits(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x))[0].numpy().astype(np.float32)

    yield Scorer(str(target), config["preprocess"], float(config["threshold"]), config.get("train_generators"),
                 logits, describe="PyTorch fp32 (run)")  # fmt: skip


def labelled_folder(data: str | Path) -> LabelledImages:
    """The labelled folder, walked once (a scorer reads it once per perturbation); refused when empty."""
    from toolkit.data.folders import find_labelled_images

    ds = find_labelled_images(data)
    if not len(ds):
        raise ValueError(f"{data} has no labelled images (want 0_real/1_fake or nature/ai sub-folders)")
    return ds


def score_folder(
    scorer: Scorer,
    ds: LabelledImages,
    perturb: Perturbation | None = None,
    batch: int = 32,
    workers: int = 2,
    advance: Callable[..., None] | None = None,
) -> Scores:
    """Every image of a labelled folder (`labelled_folder`) -> logits (unreadable files skipped with reasons)."""
    from toolkit.data.loader import batches

    index = {str(p): i for i, p in enumerate(ds.paths)}
    logits, kept, skipped = [], [], []
    for b in batches(ds.paths, scorer.preprocess, batch, workers, perturb=perturb):
        if len(b.paths):
            logits.append(np.asarray(scorer.logits(b.array), dtype=np.float32).reshape(-1))
            kept += b.paths
        skipped += b.skipped
        if advance is not None:
            advance(len(b.paths) + len(b.skipped))
    if not kept:
        raise ValueError(f"{ds.root}: no readable images ({len(skipped)} skipped)")
    idx = [index[p] for p in kept]
    return Scores(
        np.concatenate(logits),
        np.array([ds.labels[i] for i in idx]),
        [ds.generators[i] for i in idx],
        kept,
        skipped,
    )


def robustness_matrix(
    target: str | Path,
    data: str | Path,
    axes: list[list[Perturbation]],
    choice=None,
    batch: int = 32,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """One row per perturbation (the clean row first): metrics at the fixed threshold + the oracle column."""
    from toolkit.evaluation import binary_metrics, oracle_threshold, per_generator_report
    from toolkit.progress import progress_bar

    rows_spec = [Perturbation()] + [p for axis in axes for p in axis if p.ops]
    rows_spec = list(dict.fromkeys(rows_spec))  # a value repeated across axes is measured once
    ds = labelled_folder(data)
    rows = []
    with (
        open_scorer(target, choice, batch, "toolkit eval --perturb") as scorer,
        progress_bar(f"eval {len(rows_spec)} perturbation(s)", len(ds) * len(rows_spec), progress) as advance,
    ):
        clean_logit: dict[str, float] = {}
        for p in rows_spec:
            s = score_folder(scorer, ds, p, batch, workers, advance)
            if not p.ops:
                clean_logit = dict(zip(s.paths, s.logits.tolist(), strict=True))
            shift = [
                abs(z - clean_logit[k]) for k, z in zip(s.paths, s.logits.tolist(), strict=True) if k in clean_logit
            ]
            gens = scorer.train_generators
            rep = per_generator_report(s.labels, s.logits, s.generators, scorer.threshold, gens or [])
            t_oracle, acc_oracle = oracle_threshold(s.labels, s.logits)
            rows.append({
                "perturbation": p.name,
                "ops": [list(o) for o in p.ops],
                "overall": binary_metrics(s.labels, s.logits, scorer.threshold),
                "mean_unseen": rep["mean_unseen"] if gens is not None else None,
                "generators": rep["generators"],
                "oracle_threshold": t_oracle,
                "oracle_acc": acc_oracle,
                "mean_abs_logit_change": float(np.mean(shift)) if shift else None,  # against the clean row
                "skipped": len(s.skipped),
            })  # fmt: skip
        describe = scorer.describe
        threshold, gens = scorer.threshold, scorer.train_generators
    return {
        "target": str(target),
        "scored_by": describe,
        "data": str(data),
        "threshold": threshold,
        "train_generators": gens,
        "rows": rows,
    }


def markdown_matrix(reports: dict[str, dict]) -> str:
    """reports: label -> robustness_matrix output; one table, rows = perturbation x label."""
    from toolkit.evaluation import _pct

    lines = [
        "Metrics at each detector's fixed threshold; `oracle acc` re-picks the threshold on the very images "
        "scored (it reads their labels: an upper bound on re-thresholding, not a deployable figure).",
        "",
        "| perturbation | detector | acc real | acc fake | acc | AP | AUC | unseen acc | unseen AP | oracle acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r["perturbation"] for rep in reports.values() for r in rep["rows"]))
    for name in names:
        for label, rep in reports.items():
            row = next((r for r in rep["rows"] if r["perturbation"] == name), None)
            if row is None:
                continue
            o, mu = row["overall"], row["mean_unseen"] or {}
            vals = [o["acc_real"], o["acc_fake"], o["acc"], o["ap"], o["auc"], mu.get("acc"), mu.get("ap")]
            lines.append(
                f"| {name} | {label} | " + " | ".join(_pct(v) for v in vals) + f" | {_pct(row['oracle_acc'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_matrix(reports: dict[str, dict], path: str | Path) -> Path:
    """One panel per perturbation op: accuracy at the fixed threshold (solid) and AUC (dashed) per detector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io import atomic_path

    ops = sorted({r["ops"][-1][0] for rep in reports.values() for r in rep["rows"] if r["ops"]})
    fig, axes = plt.subplots(1, max(len(ops), 1), figsize=(4.2 * max(len(ops), 1), 3.4), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=False):
        for label, rep in reports.items():
            clean = next(r for r in rep["rows"] if not r["ops"])
            pts = [
                (r["ops"][-1][1], r) for r in rep["rows"] if r["ops"] and r["ops"][-1][0] == op and len(r["ops"]) == 1
            ]
            ident = IDENTITY.get(op)
            if ident is not None:
                pts.append((ident, clean))
            pts.sort(key=lambda t: t[0], reverse=op in ("jpeg", "resize"))
            xs = [x for x, _ in pts]
            line = ax.plot(xs, [100 * r["overall"]["acc"] for _, r in pts], marker="o", label=f"{label} acc")[0]
            ax.plot(xs, [100 * (r["overall"]["auc"] or 0) for _, r in pts], ls="--", marker=".",
                    color=line.get_color(), label=f"{label} AUC")  # fmt: skip
        ax.set_title({"jpeg": "JPEG quality", "blur": "Gaussian blur sigma", "resize": "downscale factor"}[op])
        if op in ("jpeg", "resize"):
            ax.invert_xaxis()
        ax.set_ylabel("%")
        ax.axhline(50, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def robustness_to_files(
    target: str | Path,
    data: str | Path,
    axes: list[list[Perturbation]],
    stem: str | Path | None = None,
    choice=None,
    batch: int = 32,
    workers: int = 2,
    progress: bool = True,
) -> tuple[dict, dict]:
    """`toolkit eval --perturb`: the matrix as <stem>.json / .md / .png (default: RUN/robustness, or
    ARTIFACT/bench/robustness: inside an artifact, reports go to its unlisted bench/ directory, never beside it)."""
    from toolkit.io import write_json, write_text

    target = Path(target)
    rep = robustness_matrix(target, data, axes, choice, batch, workers, progress)
    if stem is None:
        stem = target / "bench" / "robustness" if is_artifact(target) else target / "robustness"
    stem = Path(stem)
    label = f"{target.name} ({rep['scored_by']})"
    md = markdown_matrix({label: rep})
    files = {
        "json": write_json(stem.with_name(stem.name + ".json"), rep),
        "md": write_text(stem.with_name(stem.name + ".md"), f"# Robustness of {target} on {data}\n\n{md}"),
        "png": plot_matrix({label: rep}, stem.with_name(stem.name + ".png")),
        "md_text": md,
    }
    return rep, files
