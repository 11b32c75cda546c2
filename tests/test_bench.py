"""`toolkit bench`: report fields, ratios, Markdown and plots agree with the JSON; unavailable engines reported."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.harness import BenchConfig, run_bench, time_engine
from benchmarks.report import FILES, write_reports
from toolkit.cli import app


@pytest.fixture(scope="module")
def report(exported_artifact, toy_data):
    cfg = BenchConfig(
        engines=("torch", "onnxruntime", "trt"),
        batches=(1, 4),
        warmup=1,
        iterations=4,
        parity_images=str(toy_data),
        parity_n=40,
        e2e_images=str(toy_data),
        e2e_n=24,
        workers=0,
    )
    return run_bench(exported_artifact, cfg, log=lambda *_: None)


def test_report_fields_and_ratios(report):
    t = report["targets"]
    assert list(t)[:3] == ["torch/fp32", "onnxruntime/fp32/cpu", "onnxruntime/fp16/cpu"]
    env = report["environment"]
    assert env["cpus"] and env["versions"]["onnxruntime"] and "torch_threads" in env and "gpu" in env
    for name in ("torch/fp32", "onnxruntime/fp32/cpu", "onnxruntime/fp16/cpu"):
        e = t[name]
        assert e["status"] == "ok" and e["parity"]["n"] == 40
        for b in ("1", "4"):
            lat = e["latency"][b]
            assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and lat["iterations"] == 4
            ref = t["torch/fp32"]["latency"][b]["p50_ms"]
            assert lat["speedup_vs_reference_p50"] == pytest.approx(ref / lat["p50_ms"])
            e2e = e["e2e"][b]
            assert e2e["images"] == 24
            assert e2e["fraction_of_engine_only"] == pytest.approx(e2e["throughput_ips"] / lat["throughput_ips"])
        assert set(e["accuracy_delta"]) == {"auc", "ap", "acc"}
    assert t["torch/fp32"]["parity"]["max_abs_logit"] == 0.0
    assert t["onnxruntime/fp32/cpu"]["parity"]["max_abs_logit"] <= 1e-4
    assert t["onnxruntime/fp16/cpu"]["parity"]["min_cosine_feature"] >= 0.999
    if t["trt/fp32"]["status"] == "skipped":
        assert "trt engine unavailable" in t["trt/fp32"]["reason"]
    assert report["copies_included"] == [n for n in t if n.startswith("trt") and t[n]["status"] == "ok"]


def test_markdown_and_plots_agree_with_json(report, tmp_path):
    files = write_reports(report, tmp_path, command="toolkit bench X")
    assert sorted(f.name for f in files) == sorted(FILES)
    data = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    assert "Command: `toolkit bench X`" in md and data["environment"]["processor"] in md
    for name, t in data["targets"].items():
        if t["status"] != "ok":
            assert f"- {name}: {t['reason']}" in md
            continue
        for b, lat in t["latency"].items():
            row = re.search(
                rf"^\| {re.escape(name)} \| {b} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", md, re.M
            )
            assert row, (name, b)
            assert float(row[1]) == pytest.approx(lat["p50_ms"], abs=5e-4)
            assert float(row[4]) == pytest.approx(lat["throughput_ips"], abs=0.05)
    for png in ("latency.png", "throughput.png", "parity.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_time_engine_duration_mode():
    class Sleepy:
        def infer(self, feed):
            return {}

        def synchronize(self):
            pass

    r = time_engine(Sleepy(), {"images": np.zeros((2, 1))}, warmup=0, iterations=1, duration_s=0.05)
    assert r["iterations"] > 5


def test_bench_cli(exported_artifact, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(exported_artifact),
            "--batch",
            "2",
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--parity-n",
            "8",
            "--out",
            str(tmp_path / "r"),
            "--precision",
            "fp16",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "bench.md").is_file()
    assert set(json.loads((tmp_path / "r" / "bench.json").read_text())["targets"]) == {
        "torch/fp32",
        "onnxruntime/fp16/cpu",
    }
    bad = CliRunner().invoke(app, ["bench", str(exported_artifact), "--precision", "int8"])
    assert bad.exit_code == 2 and "no ['int8'] variant" in bad.output
