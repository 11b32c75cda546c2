"""`toolkit demo`: the whole chain, offline on a CPU, on the embedded benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out


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
    from toolkit.cli.workflows import demo

    demo(workdir, clip, epochs, purifier_pairs, purifier_steps, purifier_eval, out)
