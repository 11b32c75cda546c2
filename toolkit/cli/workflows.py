"""Flows that wire the side packages together (docs/DESIGN.md: only toolkit/cli/ may): export + int8 + TensorRT,
bench with plan building. Each CLI command stays a thin parser over one function here or in the library."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "fp16")
    gate_overrides: dict = field(default_factory=dict)  # (precision, bound) -> value
    repair: bool = False  # a failed fp16 / int8 gate: keep the fewest layers in float that make it pass
    verify_images: Path | None = None
    calib_images: Path | None = None  # int8
    eval_images: Path | None = None  # int8
    trt_batches: tuple[int, int, int] | None = None  # build TensorRT plans for this (min, opt, max) profile
    workspace_mib: int = 4096


def export_all(run: Path, out_dir: Path, opts: ExportOptions, log=print):
    """Export (gated) -> [int8 calibration with its gate] -> [TensorRT plans]; -> the final Artifact.

    Everything the run's kind cannot do is refused before any work starts."""
    from export.core import export_run
    from toolkit import kinds

    kind = kinds.for_run(run)
    int8 = "int8" in opts.precisions
    if int8:
        kind.require("int8", "--precision int8")
        if not (opts.calib_images and opts.eval_images):
            raise ValueError("--precision int8 needs --calib-images and --eval-images")
    bf16 = "bf16" in opts.precisions
    if bf16:
        kind.require("detects", "--precision bf16 (gated on AUC)")
        if not opts.eval_images:
            raise ValueError("--precision bf16 needs --eval-images (a held-out labelled folder for its gate)")
    if opts.trt_batches:
        kind.require("trt", "--trt")
    gates = kind.gates(opts.gate_overrides)  # refuse a gate bound this kind does not have, before exporting
    floats = tuple(p for p in opts.precisions if p not in ("int8", "bf16"))
    art = export_run(run, out_dir, floats, opts.gate_overrides, opts.verify_images, log=log, repair=opts.repair)
    from toolkit.cli.summaries import calibration_summary, export_summary

    log(export_summary(art))
    if int8:  # the same path as 'toolkit calibrate', default settings
        from calibration.pipeline import calibrate_artifact

        r = calibrate_artifact(art, opts.calib_images, opts.eval_images, gate=gates["int8"], log=log,
                               repair=opts.repair)  # fmt: skip
        art = r["artifact_object"]
        log(calibration_summary(r))
    if bf16:  # the fp32 graph executed in bf16 by OpenVINO, gated like int8 (export/bf16.py)
        from export.bf16 import add_bf16

        r = add_bf16(art, opts.eval_images, gates["bf16"], log=log)
        art = r["artifact_object"]
        s = r["stats"]
        log(
            f"bf16 gate passed (OpenVINO): min feature cosine {s['min_cosine_feature']:.5f}, "
            f"decision agreement {100 * s['decision_agreement']:.2f}% at its operating point, AUC drop "
            f"{s['auc_drop_points']:+.2f}, accuracy drop {s['acc_drop_points']:+.2f} points"
        )
    if opts.trt_batches:  # after the ONNX export, so a machine without TensorRT still keeps the gated ONNX files
        from export.tensorrt import build_artifact_plans

        plans = build_artifact_plans(art, opts.trt_batches, opts.workspace_mib, log=log)
        log("TensorRT plans: " + ", ".join(f"{p} -> {path}" for p, path in plans.items()))
    return art  # opened and verified once, at export; each later stage re-sealed what it wrote


def bench_artifact(
    artifact: Path, cfg, out_dir: Path, command: str | None, log=print, tune: bool = False
) -> tuple[dict, list]:
    """`toolkit bench`: run the harness (building TensorRT plans when asked) and write its reports; with
    `tune`, measure every engine kind available here and write the machine's tuning record for --engine auto."""
    from benchmarks.harness import run_bench
    from benchmarks.report import write_reports

    def plan_builder(art: Path, batches: tuple[int, int, int], prec: str) -> None:
        from export.tensorrt import build_artifact_plans

        build_artifact_plans(art, batches, precisions=(prec,), log=log)

    if tune:  # every engine kind this machine can run, so the record holds the real fastest
        from dataclasses import replace

        from toolkit.engines import available_kinds

        cfg = replace(cfg, engines=available_kinds())
    report = run_bench(artifact, cfg, log=log, plan_builder=plan_builder)
    files = write_reports(report, out_dir, command)
    if tune:
        files.append(write_tuning_record(artifact, report, command))
    return report, files


def debug_precision(artifact: Path, precision: str, engine: str, images, n: int, cpu: str, out_dir,
                    min_sqnr_db, min_cosine, log=print) -> tuple[dict, list]:  # fmt: skip
    """`toolkit debug`: toolkit/layerwise.py. `cpu`: which x86 int8 arithmetic onnxruntime's int8 is judged in:
    vnni (exact integer sums), no-vnni (int16 pair sums saturating, emulated by calibration/saturation.py) or
    native, this CPU's own: no-vnni on x86 without VNNI, where native would otherwise show the exact sums."""
    from toolkit.artifact import Artifact
    from toolkit.layerwise import debug_artifact
    from toolkit.machine import int8_pairs_saturate

    if cpu not in ("native", "vnni", "no-vnni"):
        raise ValueError(f"--cpu takes native, vnni or no-vnni, got {cpu!r}")
    int8_ort = precision == "int8" and engine == "onnxruntime"
    if cpu != "native" and not int8_ort:
        raise ValueError(f"--cpu {cpu} judges int8 as onnxruntime runs it on x86 CPUs with / without VNNI: "
                         "--precision int8 --engine onnxruntime")  # fmt: skip
    art = Artifact.open(artifact)
    art.require(precision)  # a missing precision is the one error, before anything about CPUs is said
    if cpu == "native" and int8_ort and int8_pairs_saturate():
        log("this CPU is x86 without VNNI: its int8 kernels saturate int16 pair sums, so --cpu native is no-vnni "
            "(emulated layer by layer, as those kernels compute; --cpu vnni shows the exact sums)")  # fmt: skip
        cpu = "no-vnni"
    emulator = None
    if cpu == "no-vnni":
        from calibration.saturation import NoVnniEmulator as emulator
    return debug_artifact(art, precision, engine, images, n, emulator, out_dir, min_sqnr_db, min_cosine, log=log)


def emulate_no_vnni(int8_path: Path, feeds: list) -> tuple[dict, dict]:
    """calibration/saturation.py's exact emulation of x86 CPUs without VNNI on the int8 file -> (outputs, counts),
    wired here for benchmarks/no_vnni_check.py (benchmarks do not import calibration: docs/DESIGN.md)."""
    import onnx

    from calibration.saturation import NoVnniEmulator

    model = onnx.load(str(int8_path))
    emulator = NoVnniEmulator(model)
    outputs, counts = emulator.run(model.graph.input[0].name, feeds)
    return outputs, {**emulator.counts, **counts}


def write_tuning_record(artifact: Path, report: dict, command: str | None) -> Path:
    """The bench's gated targets, per batch, as the machine's tuning record (toolkit/tuning.py)."""
    from toolkit.artifact import Artifact
    from toolkit.tuning import measured_from_targets, write_record

    art = Artifact.open(artifact)
    return write_record(art, measured_from_targets(art, report["targets"], report["config"]["provider"]), command)


def demo(
    workdir: Path, clip: str, epochs: int, purifier_pairs: int, purifier_steps: int, purifier_eval: int, out
) -> None:
    """The whole chain of `toolkit demo` (see its --help); `out` is the rich console it prints to."""
    from benchmarks.harness import BenchConfig, run_bench
    from benchmarks.report import write_reports
    from calibration.pipeline import calibrate_artifact
    from export.core import export_run
    from toolkit.artifact import GateFailed
    from toolkit.cli.common import user_errors
    from toolkit.cli.summaries import calibration_summary, export_summary, print_report
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
        m = export_run(workdir / "runs" / "causal", artifact, verify_images=val, log=out.print)
    out.print(export_summary(m))

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

    out.rule("purifier: PGD pairs -> teacher -> noised student (+ one-step student, DiffPure baselines) -> table")
    from benchmarks.purifier_eval import run as run_purifier_eval
    from toolkit.pipelines.defences import purifier_markdown

    steps = purifier_steps
    with user_errors():
        # adaptive attacks in the demo: through the cheap defences only; BPDA through the 25-step teacher and
        # DiffPure would cost over a minute each (48 images x 10 PGD steps x 142 ms measured), more than the
        # demo's margin under 10 minutes, so their cells say "not run" and benchmarks/purifier_eval.py fills them
        r = run_purifier_eval(
            workdir,
            purifier_pairs,
            purifier_eval,
            10,
            steps,
            max(1, 2 * steps // 3),
            steps,
            25,
            adaptive_eps=(8,),
            adaptive_rows=("none", "JPEG", "TV", "student", "noised"),
            eot=1,
            log=out.print,
            noised_steps=max(1, 2 * steps // 3),
            noised_draws=1,  # one teacher pass over adv + clean (37 s of 2 cores); the benchmark draws 2
        )
        p_art = workdir / "artifacts" / "purifier"
        pm = export_run(workdir / "purifier" / "run", p_art, log=out.print)
    out.print(export_summary(pm))
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
