"""`toolkit demo`: the whole chain, offline on a CPU, on the embedded benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def demo_command(
    workdir: Path = typer.Option(Path("demo_out"), help="where data, runs, artifacts and reports go"),
    clip: str = typer.Option("tiny-vit-64", help="CLIP preset (tiny by default, so it runs offline)"),
    epochs: int = typer.Option(80, min=1),
    purifier_pairs: int = typer.Option(96, min=8, help="images attacked to train the purifier (x2 eps)"),
    purifier_steps: int = typer.Option(120, min=1, help="optimiser steps of the teacher (student: 2/3)"),
    purifier_eval: int = typer.Option(48, min=8, help="held-out images in the purifier table"),
) -> None:
    """Build the embedded benchmark; train CausalCLIP and the linear probe on one generator family and
    report both on the unseen families; export CausalCLIP to ONNX fp32 + fp16 with their parity gates;
    calibrate int8 with its accuracy gate; bench every engine and precision against PyTorch; run folder
    inference on the test images; then attack the detector, train the supervised diffusion purifier,
    distil it to one step, export it, purify + detect, and print the defence table.

    Example: toolkit demo --workdir demo_out
    """
    from benchmarks.harness import BenchConfig, run_bench
    from benchmarks.report import write_reports
    from calibration.pipeline import calibrate_artifact
    from export.detector import export_detector
    from toolkit.artifact import GateFailed
    from toolkit.cli.bench import print_report
    from toolkit.cli.calibrate import calibration_summary
    from toolkit.cli.export import export_summary
    from toolkit.engines import KINDS
    from toolkit.evaluation import rich_table
    from toolkit.pipelines.generalisation import run_generalisation
    from toolkit.pipelines.infer import InferConfig, run_inference

    with user_errors():
        res = run_generalisation(workdir, clip=clip, epochs=epochs)
    out.print(rich_table(res["reports"], title="CausalCLIP vs linear probe, embedded benchmark (%)"))
    out.print(f"report: {res['markdown']} and {res['json']}")

    bench = Path(res["benchmark"])
    train, val, test = (bench / res["protocol"][k] for k in ("train", "threshold", "test"))
    artifact = workdir / "artifacts" / "causal"
    with user_errors():
        m = export_detector(workdir / "runs" / "causal", artifact, verify_images=val, log=out.print)
    out.print(export_summary(artifact, m))

    out.rule("calibrate: int8 Q/DQ on the training split, gated on the test split")
    with user_errors():
        try:  # a failed int8 gate is a result, not a crash: the demo goes on with fp32 + fp16
            out.print(calibration_summary(calibrate_artifact(artifact, train, test, log=out.print)))
        except GateFailed as e:
            out.print(f"[yellow]int8 not added: {e}[/]")

    out.rule("bench: every engine against PyTorch fp32")
    cfg = BenchConfig(
        engines=KINDS, batches=(1, 8), parity_images=str(test), parity_n=512, e2e_images=str(test), e2e_n=512
    )
    with user_errors():
        report = run_bench(artifact, cfg, log=out.print)
        files = write_reports(report, workdir / "bench", command="toolkit demo")
    print_report(report, files)

    out.rule("infer: the test images, resumable")
    with user_errors():
        s = run_inference(test, artifact, workdir / "preds.csv", InferConfig(overwrite=True), log=out.print)
    out.print(
        f"{s['predicted_now']} predicted ({s['generated_now']} generated), {s['skipped_now']} skipped, "
        f"{s['already_done']} already done; {s['rows_total']} rows in {s['predictions']}"
    )

    out.rule("purifier: PGD pairs -> teacher -> one-step student (+ DiffPure baseline) -> table")
    from benchmarks.purifier_eval import run as run_purifier_eval
    from export.purifier import export_purifier
    from toolkit.pipelines.purifier import purifier_markdown

    steps = purifier_steps
    with user_errors():
        r = run_purifier_eval(
            workdir, purifier_pairs, purifier_eval, 10, steps, max(1, 2 * steps // 3), steps, 25, log=out.print
        )
        p_art = workdir / "artifacts" / "purifier"
        pm = export_purifier(workdir / "purifier" / "run", p_art, log=out.print)
    out.print(export_summary(p_art, pm))
    out.print(purifier_markdown(r))
    with user_errors():
        s = run_inference(
            test,
            artifact,
            workdir / "preds_purified.csv",
            InferConfig(overwrite=True, purify=str(p_art)),
            log=out.print,
        )
    out.print(f"purify + detect: {s['rows_total']} rows in {s['predictions']} ({s['images_per_s']:.1f} images/s)")
