"""The model-kind registry: every command asks the kind; what a kind cannot do is refused in one line, what it can
do works (export, bench, calibrate, infer, purify on a purifier artifact); a new kind is one module."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from toolkit import kinds
from toolkit.cli import app

runner = CliRunner()


def _one_line(res, only: bool = True) -> str:
    """No traceback; one `error:` line, the last (`only`: and nothing before it)."""
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), (
        res.output
    )
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and (len(lines) == 1 or not only), res.output
    return errors[0]


def test_registry_finds_both_kinds_from_their_runs(trained_run, purifier_run, tmp_path):
    assert kinds.names() == ["detector", "purifier"]
    assert kinds.for_run(trained_run).name == "detector" and kinds.for_run(purifier_run).name == "purifier"
    (tmp_path / "config.json").write_text(json.dumps({"format": "someone-else/model@3"}))
    with pytest.raises(kinds.KindError, match="unknown run format"):
        kinds.for_run(tmp_path)


def test_a_new_kind_is_one_module(tmp_path, monkeypatch):
    """Dropping a module that defines KIND into the kinds package is all it takes."""
    pkg = tmp_path / "extra_kinds"
    pkg.mkdir()
    (pkg / "toy.py").write_text(
        "from toolkit.kinds.base import Capabilities, ModelKind\n"
        "class Toy(ModelKind):\n"
        "    name = 'toy'\n"
        "    run_format = 'causal-deploy-toolkit/toy@1'\n"
        "    capabilities = Capabilities(detects=False, purifies=False, int8='no', trt=False)\n"
        "KIND = Toy()\n"
    )
    monkeypatch.setattr(kinds, "__path__", [*kinds.__path__, str(pkg)])
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    monkeypatch.setattr(importlib, "import_module", _import_from(pkg, importlib.import_module))
    kinds._registry.cache_clear()
    try:
        assert "toy" in kinds.names()
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.json").write_text(json.dumps({"format": "causal-deploy-toolkit/toy@1"}))
        assert kinds.for_run(tmp_path / "run").name == "toy"
        with pytest.raises(kinds.KindError, match="--trt needs a kind with TensorRT plans"):
            kinds.get("toy").require("trt", "--trt")
    finally:
        kinds._registry.cache_clear()


def _import_from(pkg, real):
    def imp(name, *a, **k):
        if name == "toolkit.kinds.toy":
            import importlib.util

            spec = importlib.util.spec_from_file_location(name, pkg / "toy.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
        return real(name, *a, **k)

    return imp


def test_export_refuses_what_a_purifier_cannot_do_and_applies_its_own_gates(purifier_run, tmp_path):
    out = tmp_path / "p"
    res = runner.invoke(app, ["export", str(purifier_run), "--out", str(out), "--precision", "int8"])
    assert res.exit_code == 2 and "int8 does not apply to purifier artifacts" in _one_line(res)
    res = runner.invoke(app, ["export", str(purifier_run), "--out", str(out), "--gate", "fp32.max_abs_logit=1e-3"])
    assert res.exit_code == 2 and "no fp32 gate bound 'max_abs_logit'" in _one_line(res)
    assert not out.exists()  # refused before any work
    res = runner.invoke(app, ["export", str(purifier_run), "--out", str(out), "--gate", "fp16.min_psnr_db=99"])
    assert res.exit_code == 2 and "min_psnr_db" in _one_line(res, only=False) and "gate >= 99" in res.output
    res = runner.invoke(app, ["export", str(purifier_run), "--out", str(out), "--gate", "fp16.min_psnr_db=35", "--trt"])
    from toolkit.engines.trt_engine import unavailable_reason

    if unavailable_reason():  # the ONNX export happened; the plan step says what is missing
        assert res.exit_code == 2 and "cannot build TensorRT plans" in _one_line(res, only=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "purifier" and m["gates"]["fp16"]["gate"]["min_psnr_db"] == 35
    for bad, says in (
        (["--gate", "int8.min_decision_agreement=0.9"], "no int8 gate bound 'min_decision_agreement'"),
        (["--gate", "fp16.min_psnr_db"], "expected PRECISION.BOUND=NUMBER"),
        (["--gate", "fp16.min_psnr_db=high"], "expected PRECISION.BOUND=NUMBER"),
    ):  # issue 24: a bound the kind does not have, or a malformed one, is one line before any work
        res = runner.invoke(app, ["export", str(purifier_run), "--out", str(tmp_path / "q"), *bad])
        assert res.exit_code == 2 and says in _one_line(res), res.output
        assert not (tmp_path / "q").exists()


def test_bench_calibrate_infer_purify_on_the_wrong_kind(purifier_artifact, exported_artifact, toy_data, tmp_path):
    res = runner.invoke(
        app,
        ["bench", str(purifier_artifact), "--batch", "1", "--iterations", "2", "--warmup", "0", "--parity-n", "4",
         "--out", str(tmp_path / "b")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert rep["kind"] == "purifier" and rep["targets"]["onnxruntime/fp32/cpu"]["parity"]["max_abs_pixel"] <= 1e-4
    assert r"max \|Δpixel\|" in (tmp_path / "b" / "bench.md").read_text()
    res = runner.invoke(
        app, ["calibrate", str(purifier_artifact), "--images", str(toy_data), "--eval-images", str(toy_data)]
    )
    assert res.exit_code == 2 and "does not apply to purifier artifacts" in _one_line(res)
    res = runner.invoke(app, ["calibrate", str(purifier_artifact), "--images", str(toy_data), "--eval-images",
                              str(toy_data), "--repair"])  # fmt: skip
    assert res.exit_code == 2 and "does not apply to purifier artifacts" in _one_line(res)
    res = runner.invoke(app, ["debug", str(purifier_artifact), "--precision", "int8"])
    assert res.exit_code == 2 and "int8" in _one_line(res), res.output
    res = runner.invoke(
        app, ["infer", str(toy_data), "--artifact", str(purifier_artifact), "--out", str(tmp_path / "x.csv")]
    )
    assert res.exit_code == 2 and "needs a detector artifact; this one is a purifier" in _one_line(res)
    assert not (tmp_path / "x.csv").exists()
    res = runner.invoke(
        app, ["purify", str(toy_data), "--artifact", str(exported_artifact), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "needs a purifier artifact; this one is a detector" in _one_line(res)
    res = runner.invoke(
        app,
        ["infer", str(toy_data), "--artifact", str(exported_artifact), "--purify", str(exported_artifact),
         "--out", str(tmp_path / "y.csv")],
    )  # fmt: skip
    assert res.exit_code == 2 and "needs a purifier artifact" in _one_line(res)
