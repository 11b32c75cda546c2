"""`toolkit bench --tune` writes this machine's tuning record; `--engine auto` uses its fastest gated choice for
the batch in use (infer, bench), or says which fallback it took and why."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from toolkit.artifact import Artifact
from toolkit.cli import app
from toolkit.tuning import record_path, resolve

runner = CliRunner()


@pytest.fixture
def art(exported_artifact, tmp_path):
    shutil.copytree(exported_artifact, tmp_path / "art")
    return tmp_path / "art"


def test_auto_without_a_record_falls_back_and_says_why(art):
    (engine, precision, _), why = resolve(Artifact.open(art), 8)
    assert (engine, precision) == ("onnxruntime", "fp32") and "no tuning record" in why


def test_tune_then_auto_picks_the_fastest_gated_choice(art, toy_data, tmp_path):
    args = ["bench", str(art), "--batch", "1", "--batch", "8", "--iterations", "3", "--warmup", "1", "--parity-n", "8"]
    res = runner.invoke(app, [*args, "--tune", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a = Artifact.open(art)  # the record is not part of the artifact's identity: it still opens
    rec = json.loads(record_path(a).read_text())
    assert set(rec["batches"]) == {"1", "8"} and rec["fingerprint"]["cpu_flags"] is not None
    for rows in rec["batches"].values():
        ips = [r["throughput_ips"] for r in rows]
        assert ips == sorted(ips, reverse=True) and {r["engine"] for r in rows} >= {"torch", "onnxruntime"}
    best8 = rec["batches"]["8"][0]
    (engine, precision, _), why = resolve(a, 8)
    assert (engine, precision) == (best8["engine"], best8["precision"]) and "fastest gated" in why
    _, why = resolve(a, 6)
    assert "nearest to 6" in why  # measured at 8, used at 6
    res = runner.invoke(app, ["infer", str(toy_data / "gan_b"), "--artifact", str(art), "--engine", "auto",
                              "--batch", "8", "--workers", "0", "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert res.exit_code == 0 and "--engine auto:" in res.output, res.output
    s = json.loads((tmp_path / "p.csv.summary.json").read_text())
    assert (s["engine"], s["precision"]) == (best8["engine"], best8["precision"]) and s["rows_total"] == 24
    res = runner.invoke(app, [*args, "--engine", "auto", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "## --engine auto" in (tmp_path / "c" / "bench.md").read_text()


def test_engines_cpu_benchmark_runs_and_compares_auto_with_the_fastest(art, tmp_path):
    """benchmarks/engines_cpu.py on the tiny artifact, minimal timing (the committed table comes from real runs)."""
    from benchmarks.engines_cpu import main

    main([str(art), "--batches", "1", "--iters", "1", "--min-seconds", "0", "--rounds", "1", "--warmup", "0",
          "--out", str(tmp_path / "e")])  # fmt: skip
    res = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert {"torch eager", "torch.compile", "onnxruntime fp32"} <= set(res["rows"])
    a = res["auto"]["1"]
    assert a["ratio_to_fastest"] == pytest.approx(a["throughput_ips"] / a["fastest_throughput_ips"])
    assert "| **auto** |" in (tmp_path / "e.md").read_text() and record_path(Artifact.open(art)).is_file()
