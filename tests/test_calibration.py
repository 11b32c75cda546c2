"""INT8 calibration: Q/DQ graph with zero points 0 that runs in ONNX Runtime; the gate passes on a good
calibration set and fails on a broken one (constant images); overlapping sets are refused."""

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from calibration.pipeline import OverlapError, calibrate_artifact
from calibration.quantize import OP_TYPES, QuantConfig, sensitive_nodes
from toolkit.artifact import Artifact, GateFailed
from toolkit.cli import app
from toolkit.engines import open_engine


@pytest.fixture(scope="module")
def subtle(tmp_path_factory):
    """A held-out set where the fakes carry a faint checkerboard: AUC well below 1, so int8 errors show."""
    from conftest import toy_image

    root = tmp_path_factory.mktemp("subtle")
    rng = np.random.default_rng(5)
    checker = ((np.indices((48, 48)).sum(0) // 2) % 2)[..., None] * 8.0
    for label, name in ((0, "0_real"), (1, "1_fake")):
        (root / name).mkdir()
        for i in range(40):
            im = np.asarray(toy_image(0, rng)).astype(float) + (checker if label else 0)
            Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def art(exported_artifact, tmp_path):
    shutil.copytree(exported_artifact, tmp_path / "art")
    return tmp_path / "art"


@pytest.fixture(scope="module")
def calibrated(exported_artifact, toy_data, tmp_path_factory):
    art = tmp_path_factory.mktemp("cal") / "art"
    shutil.copytree(exported_artifact, art)
    report = calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", workers=0, progress=False)
    return art, report


def test_qdq_graph_with_zero_points_zero_runs_in_onnxruntime(calibrated):
    art, report = calibrated
    m = Artifact.open(art).manifest  # hashes verified, int8 included
    assert m["precisions"]["int8"]["file"] == "detector.int8.onnx" and "detector.int8.onnx" in m["files"]
    assert m["gates"]["int8"]["passed"] and report["passed"]
    model = onnx.load(str(art / "detector.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear") / 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type.endswith("QuantizeLinear") and len(n.input) > 2]
    assert zps and all(np.all(z == 0) and z.dtype == np.int8 for z in zps)
    # per-channel weights: some DequantizeLinear has a vector of scales
    assert any(
        inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[1] in inits
    )
    # Q/DQ sit on the inputs of weighted ops only (TensorRT's placement advice): no weighted op's output is
    # re-quantized, which costs an int8 round trip and, in ONNX Runtime, a requantize + dequantize per GEMM
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    requantized = [
        n.name for n in model.graph.node if n.op_type == "QuantizeLinear" and produced_by.get(n.input[0]) in OP_TYPES
    ]
    assert requantized == []
    # the patch embedding and the head stay float: their inputs are not dequantized weights
    fp32 = onnx.load(str(art / "detector.fp32.onnx"))
    kept = set(sensitive_nodes(fp32, QuantConfig()))
    for n in model.graph.node:
        if n.name in kept and n.op_type in ("Conv", "Gemm", "MatMul"):
            assert all(i in inits and inits[i].dtype == np.float32 for i in n.input[1:2]), n.name
    with open_engine(art, "onnxruntime", "int8") as e:
        out = e.infer({"images": np.zeros((3, 3, 32, 32), np.float32)})
    assert out["logit"].shape == (3,)
    assert (art / "int8_report.md").read_text().count("Gate passed") == 1


def test_gate_passes_on_good_and_fails_on_a_constant_calibration_set(
    art, exported_artifact, toy_data, subtle, tmp_path
):
    """Measured while writing this: fp32 AUC ~74 on `subtle`; good calibration ~82 (passes); 16 constant grey
    images with the patch embedding quantized too (its input range collapses to one value) ~60 (fails).
    With the patch embedding kept in float (the default) a constant set only costs ~1 point: the
    LayerNorms re-normalise what follows, which is why it is kept in float."""
    good = calibrate_artifact(art, toy_data / "gan_a", subtle, workers=0, progress=False)
    assert good["passed"] and good["auc_drop_points"] <= 0.5
    const = tmp_path / "const"
    const.mkdir()
    for i in range(16):
        Image.new("RGB", (48, 48), (128, 128, 128)).save(const / f"{i}.png")
    art = tmp_path / "fresh"
    shutil.copytree(exported_artifact, art)
    before = Artifact.open(art).manifest
    with pytest.raises(GateFailed, match=r"int8 gate failed .*: auc_drop_points [\d.]+ \(gate <= 0\.5\)"):
        calibrate_artifact(art, const, subtle, QuantConfig(keep_patch_embedding=False), workers=0, progress=False)
    assert not (art / "detector.int8.onnx").exists()
    after = Artifact.open(art).manifest  # still a valid artifact: only the report files were added to its list
    assert {k: v for k, v in after.items() if k != "files"} == {k: v for k, v in before.items() if k != "files"}
    assert set(after["files"]) - set(before["files"]) == {"int8_report.json", "int8_report.md"}
    assert "Gate FAILED" in (art / "int8_report.md").read_text()


def test_overlapping_calibration_and_evaluation_images_are_refused(art, toy_data, tmp_path):
    copy = tmp_path / "calib"
    shutil.copytree(toy_data / "gan_b" / "1_fake", copy)  # same content, other names
    with pytest.raises(OverlapError, match="also calibration images"):
        calibrate_artifact(art, copy, toy_data / "gan_b", workers=0, progress=False)


def test_methods_and_bad_options(art, toy_data):
    with pytest.raises(ValueError, match="method must be one of"):
        QuantConfig(method="kl")
    with pytest.raises(ValueError, match="not in the graph"):
        calibrate_artifact(
            art, toy_data / "gan_a", toy_data / "gan_b", QuantConfig(exclude_nodes=["nope"]), workers=0, progress=False
        )


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods(art, toy_data, method):
    r = calibrate_artifact(
        art, toy_data / "gan_a", toy_data / "gan_b", QuantConfig(method=method), calib_n=16, workers=0, progress=False
    )
    assert r["quantization"]["method"] == method and Artifact.open(art).manifest["precisions"]["int8"]


def test_calibrate_cli(art, toy_data):
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            str(art),
            "--images",
            str(toy_data / "gan_a"),
            "--eval-images",
            str(toy_data / "gan_b"),
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "int8 gate passed" in res.output


def test_int8_speedup_benchmark_reports_the_rounds_it_ran(calibrated, art, tmp_path):
    """benchmarks/int8_speedup.py: the table's figures are the medians of the rounds in its JSON."""
    import json

    from benchmarks.int8_speedup import main

    cal, _ = calibrated
    out = tmp_path / "sp"
    main([str(cal), "--batches", "1", "3", "--rounds", "3", "--iters", "2", "--min-seconds", "0", "--out", str(out)])
    res = json.loads(out.with_suffix(".json").read_text())["results"][0]
    md = out.with_suffix(".md").read_text()
    for b in ("1", "3"):
        v = res["batches"][b]
        ratios = [r["fp32"]["p50_ms"] / r["int8"]["p50_ms"] for r in v["rounds"]]
        assert len(ratios) == 3 and v["speedup_median"] == pytest.approx(float(np.median(ratios)))
        assert v["speedup_min"] <= v["speedup_median"] <= v["speedup_max"]
        assert f"| {b} | {v['fp32_p50_ms']:.2f} | {v['int8_p50_ms']:.2f} | **{v['speedup_median']:.2f}x** |" in md
    assert "| passed |" in md
    with pytest.raises(SystemExit, match="no int8 variant"):
        main([str(art), "--rounds", "1", "--out", str(tmp_path / "none")])


def test_openvino_runs_the_int8_qdq_file_close_to_onnxruntime(calibrated):
    pytest.importorskip("openvino")
    calibrated, _ = calibrated
    x = np.random.default_rng(5).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with open_engine(calibrated, "onnxruntime", "int8") as o, open_engine(calibrated, "openvino", "int8") as v:
        a, b = o.infer({"images": x}), v.infer({"images": x})
    cos = (
        (a["feature"] * b["feature"]).sum(1)
        / np.linalg.norm(a["feature"], axis=1)
        / np.linalg.norm(b["feature"], axis=1)
    )
    assert cos.min() > 0.99  # the same Q/DQ graph; the two runtimes round int8 accumulations differently


def test_reduce_range_is_chosen_from_the_cpu_and_recorded(calibrated):
    from calibration.quantize import choose_reduce_range

    assert choose_reduce_range(QuantConfig(), ["avx2", "fma"])[0] is True  # AVX2 without VNNI: 7-bit weights
    assert choose_reduce_range(QuantConfig(), ["avx2", "avx512f", "avx512_vnni"])[0] is False
    assert choose_reduce_range(QuantConfig(), ["avx2", "avx_vnni"])[0] is False
    assert choose_reduce_range(QuantConfig(reduce_range=True), ["avx512_vnni"]) == (True, "set explicitly")
    art, report = calibrated
    q = Artifact.open(art).precisions["int8"]
    assert q["reduce_range"] == report["quantization"]["reduce_range"] and q["reduce_range_reason"]


VNNI_CPU = ["avx2", "fma", "avx512f", "avx512_vnni"]


@pytest.mark.parametrize("reduce_range", [False, True])
def test_every_int8_file_is_also_gated_for_cpus_without_vnni(art, toy_data, reduce_range, monkeypatch):
    """Calibration judges the file under the exact no-VNNI emulation too, and the manifest keeps the verdict;
    with 7-bit weights no pair can saturate and the native verdict is that CPU's verdict."""
    import contextlib
    import json

    monkeypatch.setattr("toolkit.machine.cpu_flags", lambda: VNNI_CPU)  # a CPU with VNNI: the other one is emulated
    cfg = QuantConfig(reduce_range=reduce_range)
    # 8-bit weights on a CPU without VNNI saturate natively and may fail: the report still says both verdicts
    with contextlib.suppress(GateFailed):
        calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", cfg, workers=0, progress=False)
    report = json.loads((art / "int8_report.json").read_text())
    nv = report["no_vnni"]
    assert isinstance(nv["passed"], bool) and 0.0 <= nv["decision_agreement"] <= 1.0
    if reduce_range:
        assert nv["candidate_pairs"] == 0 and nv["judged"].startswith("no weight pair can saturate")
        assert nv["auc_drop_points"] == report["auc_drop_points"]
    else:
        assert nv["candidate_pairs"] > 0 and nv["judged"].startswith("emulated on")
    if report["passed"]:
        gate = Artifact.open(art).gates["int8"]["no_vnni"]
        assert gate["passed"] == nv["passed"] and gate["engine"].endswith("(emulated)")
    assert "without VNNI" in (art / "int8_report.md").read_text()


def test_the_no_vnni_emulation_stops_at_its_time_budget_and_judges_a_balanced_prefix(art, toy_data, monkeypatch):
    """Issue 25: at ViT-L/14 the emulation costs about 280 s per image (92% of GEMM sums saturate), so the default
    64 images were five hours. It stops at --no-vnni-minutes and judges the images emulated by then."""
    import contextlib
    import json

    monkeypatch.setattr("toolkit.machine.cpu_flags", lambda: VNNI_CPU)
    lines = []
    with contextlib.suppress(GateFailed):
        calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", QuantConfig(reduce_range=False), workers=0,
                           progress=False, no_vnni_n=24, no_vnni_minutes=1e-9, log=lines.append)  # fmt: skip
    nv = json.loads((art / "int8_report.json").read_text())["no_vnni"]
    assert nv["judged"] == "emulated on 16 images of 24 (the --no-vnni-minutes budget ended it)", nv["judged"]
    assert nv["feeds_done"] == 1 and nv["n"] == 16
    assert any("s per image measured" in str(x) and "budget ends it" in str(x) for x in lines), lines


def test_without_vnni_that_verdict_is_measured_here_and_the_vnni_one_runs_exact_sums(art, toy_data, monkeypatch):
    """On x86 without VNNI this CPU's own int8 kernels are the no-VNNI case: that verdict is measured on every
    evaluation image, not emulated on a sample (at ViT-B/16 the emulation was about 22 s per image); the main gate,
    for CPUs with VNNI, runs the file with graph optimisations off (exact integer sums)."""
    import contextlib
    import json

    from calibration.pipeline import NO_VNNI_HERE, WITH_VNNI
    from calibration.saturation import NoVnniEmulator
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

    monkeypatch.setattr("toolkit.machine.cpu_flags", lambda: ["avx2", "fma"])
    monkeypatch.setattr(NoVnniEmulator, "run", lambda *a, **k: pytest.fail("emulated on a CPU without VNNI"))
    opened, init = [], OnnxRuntimeEngine.__init__

    def spy(self, path, *a, optimize=True, **k):
        opened.append((str(path).rsplit("/", 1)[-1], optimize))
        init(self, path, *a, optimize=optimize, **k)

    monkeypatch.setattr(OnnxRuntimeEngine, "__init__", spy)
    with contextlib.suppress(GateFailed):
        calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", QuantConfig(reduce_range=False), workers=0,
                           progress=False, no_vnni_n=4)  # fmt: skip
    report = json.loads((art / "int8_report.json").read_text())
    nv = report["no_vnni"]
    assert nv["engine"] == NO_VNNI_HERE and nv["candidate_pairs"] > 0
    assert nv["judged"] == f"measured on this CPU (x86 without VNNI) on all {report['eval_n']} evaluation images"
    assert nv["n"] == report["eval_n"]  # every image, whatever --no-vnni-n says: measuring costs one run
    assert [o for o in opened if o[0].endswith("int8.onnx")] == [
        ("detector.int8.onnx", False),
        ("detector.int8.onnx", True),
    ]
    if report["passed"]:
        assert Artifact.open(art).gates["int8"]["engine"] == WITH_VNNI


def test_int8_that_fails_without_vnni_is_refused_only_on_such_cpus(calibrated, tmp_path, monkeypatch):
    from toolkit.engines import int8_refusal

    shutil.copytree(calibrated[0], tmp_path / "art")
    a = Artifact.open(tmp_path / "art")
    failed = {"passed": False, "failures": ["auc_drop_points 2.9 > 0.5"], "engine": "emulated", "auc_drop_points": 2.9}
    a = a.update(gates={**a.gates, "int8": {**a.gates["int8"], "no_vnni": failed}})
    assert int8_refusal(a, ["avx2", "avx512f", "avx512_vnni"]) is None  # VNNI: int32 products, nothing saturates
    assert int8_refusal(a, []) is None  # not x86 AVX2 (the kernels differ)
    msg = int8_refusal(a, ["avx2", "fma"])
    assert msg and "without VNNI" in msg and "auc_drop_points 2.9" in msg and "\n" not in msg
    monkeypatch.setattr("toolkit.machine.cpu_flags", lambda: ["avx2", "fma"])
    with pytest.raises(RuntimeError, match="recalibrate with --repair"):
        open_engine(a, "onnxruntime", "int8")
    with open_engine(a, "onnxruntime", "fp32"):  # fp32 is untouched
        pass
    ok = a.update(gates={**a.gates, "int8": {**a.gates["int8"], "no_vnni": {**failed, "passed": True}}})
    with open_engine(ok, "onnxruntime", "int8"):
        pass
