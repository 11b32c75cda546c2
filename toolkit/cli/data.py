"""`toolkit data embedded`: build the offline embedded benchmark (scikit-image photos + 5 generator families)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors

app = typer.Typer(help="Datasets.", no_args_is_help=True)


@app.command("embedded")
def embedded(
    out_dir: Path = typer.Option(Path("data/embedded"), "--out", help="where to write the benchmark"),
    seed: int = typer.Option(0),
) -> None:
    """Build the embedded benchmark (about 3 minutes on 2 CPU cores; reused when already built).

    Example: toolkit data embedded --out data/embedded
    """
    from toolkit.data.embedded import EmbeddedConfig, build_embedded_benchmark
    from toolkit.io import read_json

    with user_errors():
        path = build_embedded_benchmark(out_dir, EmbeddedConfig(seed=seed))
    meta = read_json(path / "benchmark.json")
    out.print(f"benchmark at {path}: protocol {meta['protocol']}")
