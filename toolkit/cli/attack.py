"""`toolkit attack`: L-infinity PGD against a detector run -> a paired (adversarial, clean) dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def attack_command(
    images: Path = typer.Argument(..., help="labelled folder (0_real/1_fake or nature/ai)"),
    run: Path = typer.Option(..., help="detector run directory (the model under attack)"),
    out_dir: Path = typer.Option(Path("pairs"), "--out", help="paired dataset directory to write"),
    eps: list[float] = typer.Option([4.0, 8.0], help="L-inf budgets in /255, whole 8-bit steps (repeatable)"),
    steps: int = typer.Option(10, min=1, help="PGD steps"),
    target: str = typer.Option("decision", help="decision (flip the detector) or embedding (move CLIP's embedding)"),
    n: int = typer.Option(256, min=1, help="images attacked (a seeded sample)"),
    seed: int = typer.Option(0),
) -> None:
    """PGD with random start at each eps; writes adv/ and clean/ PNGs (lossless) + pairs.jsonl + summary.json.

    Example: toolkit attack data/embedded/train/ae_transposed --run runs/causal --eps 4 --eps 8 --out pairs
    """
    from toolkit.pipelines.attack import make_pairs

    with user_errors():
        s = make_pairs(run, images, out_dir, tuple(eps), steps, target, n)
    rates = ", ".join(f"eps {e}/255: {100 * r:.1f}%" for e, r in s["attack_success_rate"].items())
    out.print(f"wrote {out_dir}: {s['n_images']} images x {len(eps)} eps; attack success ({target}): {rates}")
