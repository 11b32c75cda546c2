"""`toolkit` command line: one module per command, each a thin wrapper over the library."""

from __future__ import annotations

import typer

from toolkit.cli import (
    attack,
    bench,
    calibrate,
    data,
    debug,
    demo,
    evaluate,
    export,
    infer,
    loadtest,
    purify,
    serve,
    threshold,
    train,
)

app = typer.Typer(
    help="CausalCLIP detector + diffusion purifier: train, evaluate, export, benchmark.\n\nExample: toolkit demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(train.app, name="train")
app.add_typer(data.app, name="data")
app.command("eval")(evaluate.eval_command)
app.command("export")(export.export_command)
app.command("calibrate")(calibrate.calibrate_command)
app.command("threshold")(threshold.threshold_command)
app.command("attack")(attack.attack_command)
app.command("bench")(bench.bench_command)
app.command("debug")(debug.debug_command)
app.command("infer")(infer.infer_command)
app.command("purify")(purify.purify_command)
app.command("serve")(serve.serve_command)
app.command("triton-repo")(serve.triton_repo_command)
app.command("loadtest")(loadtest.loadtest_command)
app.command("demo")(demo.demo_command)


def main() -> None:
    app()
