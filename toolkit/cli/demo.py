"""`toolkit demo`: the whole chain, offline on a CPU, on the embedded benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def demo_command(
    workdir: Path = typer.Option(Path("demo_out"), help="where data, runs, artifacts and reports go"),
    clip: str = typer.Option("tiny-vit-64", help="CLIP preset (tiny by default, so it runs offline)"),
    epochs: int = typer.Option(80, min=1),
) -> None:
    """Build the embedded benchmark; train CausalCLIP and the linear probe on one generator family and
    report both on the unseen families; export CausalCLIP to ONNX fp32 + fp16 with their parity gates;
    calibrate int8 with its accuracy gate; bench every engine and precision against PyTorch; run folder
    inference on the test images.

    Example: toolkit demo --workdir demo_out
    """
    from benchmarks.harness import BenchConfig, run_bench
    from benchmarks.report import rich_tables, write_reports
    from calibration.pipeline import calibrate_artifact
    from export.detector import export_detector
    from toolkit.artifact import GateFailed
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
    for t in rich_tables(report):
        out.print(t)
    for name, t in report["targets"].items():
        if t["status"] != "ok":
            out.print(f"[yellow]{name} not run:[/] {t['reason']}")
    out.print("bench report: " + ", ".join(str(f) for f in files))

    out.rule("infer: the test images, resumable")
    with user_errors():
        s = run_inference(test, artifact, workdir / "preds.csv", InferConfig(overwrite=True), log=out.print)
    out.print(
        f"{s['predicted_now']} predicted ({s['generated_now']} generated), {s['skipped_now']} skipped, "
        f"{s['already_done']} already done; {s['rows_total']} rows in {s['predictions']}"
    )
