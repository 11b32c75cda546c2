"""`toolkit threshold`: choose a detector artifact's decision threshold on labelled data; re-seal the manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def threshold_command(
    artifact: Path = typer.Argument(..., help="detector artifact directory from 'toolkit export'"),
    data: Path = typer.Argument(..., help="labelled folder (0_real/1_fake or nature/ai), not the test split"),
    target_fpr: float | None = typer.Option(None, help="rule: the lowest threshold with FPR <= this on real images"),
    best_acc: bool = typer.Option(False, "--best-acc", help="rule: the threshold with the best accuracy on DATA"),
    engine: str = typer.Option("onnxruntime", help="engine that scores DATA: torch | onnxruntime | openvino | trt"),
    precision: str = typer.Option("fp32", help="precision that scores DATA (the one you will deploy)"),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    batch: int = typer.Option(32, min=1, help="images per engine call"),
    workers: int = typer.Option(2, min=0, help="decode worker processes"),
    dry_run: bool = typer.Option(False, help="print the threshold and its metrics; leave the manifest as it is"),
) -> None:
    """Re-pick the decision threshold (logit > t) of a detector artifact on your own labelled data.

    The artifact scores DATA with the given engine and precision; the chosen threshold and its provenance
    (rule, data folder + hash of the files scored, engine, date, previous value) are written into the sealed
    manifest. Predictions written under the old threshold are not resumed under the new one.

    Example: toolkit threshold artifacts/causal data/calib_traffic --target-fpr 0.05
    """
    from toolkit.pipelines.threshold import calibrate_threshold
    from toolkit.predict import EngineChoice

    with user_errors():
        r = calibrate_threshold(artifact, data, target_fpr, best_acc, EngineChoice(engine, precision, provider),
                                batch, workers, dry_run)  # fmt: skip
    b, a, p = r["before"], r["after"], r["provenance"]
    out.print(f"scored {p['n_real']} real + {p['n_fake']} generated images with {p['scored_by']}"
              + (f" ({p['skipped']} unreadable skipped)" if p["skipped"] else ""))  # fmt: skip
    for name, m, t in (("old", b, r["previous"]), ("new", a, r["threshold"])):
        fpr = "-" if m["acc_real"] is None else f"{100 * (1 - m['acc_real']):.1f}%"
        fake = "-" if m["acc_fake"] is None else f"{100 * m['acc_fake']:.1f}%"
        out.print(f"{name} threshold {t:+.4f}: FPR {fpr}, generated caught {fake}, accuracy {100 * m['acc']:.1f}%")
    out.print(
        f"wrote the threshold into {artifact}/manifest.json ({p['rule']})"
        if r["written"]
        else "dry run: nothing written"
    )
