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


def test_unset_sizes_fit_the_budget_and_what_the_user_set_is_kept():
    """Issue 25: the fixed defaults (256 parity images, 5+30 iterations at batches 1 and 8) were 35 minutes at
    ViT-L/14 on 2 cores, with no warning."""
    from benchmarks.harness import size_run

    vitl = size_run(BenchConfig(), targets=5, per_image_s=1.2)  # torch + 4 onnxruntime/openvino targets
    assert vitl.parity_n == 40 and vitl.iterations == {1: 7, 8: 5} and vitl.estimate_s <= 600
    assert "over the" not in vitl.line() and "about 9.6 min" in vitl.line()
    tiny = size_run(BenchConfig(), targets=3, per_image_s=0.001)
    assert (tiny.parity_n, tiny.iterations, tiny.warmup) == (256, {1: 30, 8: 30}, {1: 5, 8: 5})
    fixed = size_run(BenchConfig(parity_n=256, iterations=30, warmup=5), targets=5, per_image_s=1.2)
    assert fixed.parity_n == 256 and fixed.estimate_s > 1800
    assert "over the 10.0 min budget. To shorten it" in fixed.line() and "--parity-n 32" in fixed.line()
    slow = size_run(BenchConfig(), targets=5, per_image_s=20.0)  # even the least sensible run does not fit
    assert slow.parity_n == 32 and "over the" in slow.line()


def test_bench_prints_its_plan_before_the_work_and_tune_keeps_the_last_report(exported_artifact, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    args = ["bench", str(art), "--batch", "2", "--precision", "fp32", "--max-minutes", "0.2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.index("bench plan:") < text.index("parity on"), text
    first = (art / "bench" / "bench.json").read_bytes()
    sizing = json.loads(first)["sizing"]
    assert sizing["parity_n"] >= 32 and sizing["iterations"]["2"] >= 5
    res = CliRunner().invoke(app, [*args, "--tune"])
    assert res.exit_code == 0, res.output
    assert (art / "bench" / "bench.json").read_bytes() == first and (art / "bench" / "tune" / "bench.json").is_file()
