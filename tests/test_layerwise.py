"""`toolkit debug` (toolkit/layerwise.py): layers matched across Cast and Q/DQ by op type and position, the layer that
breaks is named first, and what cannot be debugged is refused in one line (issue 24)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from export.precision import convert_to_fp16
from toolkit.cli import app
from toolkit.layerwise import OrtLayers, compare_layers, match_layers, report, upstream

runner = CliRunner()


def _mlp(scale: float):
    """x -> MatMul a -> Relu -> MatMul b (weights x `scale`) -> Mul (1/scale) -> MatMul c -> y. With scale 1e4 the
    second MatMul's output passes fp16's 65504 while every other tensor stays small."""
    rng = np.random.default_rng(0)
    w = {k: rng.normal(0, 0.3, (16, 16)).astype(np.float32) for k in "ac"}
    w["b"] = (rng.normal(0, 0.3, (16, 16)) * scale).astype(np.float32)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array(1 / scale, np.float32), "inv"))
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "b"], ["h2"], name="mm2"),
        helper.make_node("Mul", ["h2", "inv"], ["h3"], name="unscale"),
        helper.make_node("MatMul", ["h3", "c"], ["y"], name="mm3"),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], inits)  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _debug(ref, cand, x, precision="fp16"):
    pairs = match_layers(ref, cand)
    run_ref = OrtLayers(ref, [p.ref for p in pairs])
    run_got = OrtLayers(cand, [p.got for p in pairs])
    stats, _, _ = compare_layers(pairs, run_ref, run_got, [x[:4], x[4:]])
    return report(pairs, stats, upstream(ref, pairs), precision, 40.0, 0.99)


def test_the_layer_that_overflows_fp16_is_named_first_and_the_ones_after_it_are_not_blamed():
    x = np.random.default_rng(1).normal(0, 3, (8, 16)).astype(np.float32)
    ref = _mlp(1e4)
    rep = _debug(ref, convert_to_fp16(ref), x)
    assert [r["node"] for r in rep["layers"]] == ["mm1", "relu", "mm2", "unscale", "mm3"]
    assert rep["first_failing"]["node"] == "mm2" and rep["first_failing"]["sqnr_db"] == -math.inf
    assert rep["top_added_error"][0]["node"] == "mm2"
    by = {r["node"]: r for r in rep["layers"]}
    assert by["mm1"]["sqnr_db"] > 40 and by["mm3"]["added_error"] == 0.0  # inherited, not its own
    healthy = _debug(_mlp(1.0), convert_to_fp16(_mlp(1.0)), x)
    assert healthy["first_failing"] is None and min(r["sqnr_db"] for r in healthy["layers"]) > 40


def test_matching_is_by_op_and_position_not_by_name():
    ref = _mlp(1.0)
    cand = convert_to_fp16(ref)
    for i, n in enumerate(cand.graph.node):
        n.name = f"renamed_{i}"
    pairs = match_layers(ref, cand)
    assert [(p.node, p.op) for p in pairs] == [("mm1", "MatMul"), ("relu", "Relu"), ("mm2", "MatMul"),
                                               ("unscale", "Mul"), ("mm3", "MatMul")]  # fmt: skip
    assert not any(p.same_name for p in pairs)
    # the Casts the fp16 graph adds are walked through: the last MatMul is compared before the Cast back to fp32
    assert [p.got for p in pairs] == ["h1", "r1", "h2", "h3", "y__fp16out"]
    extra = onnx.ModelProto.FromString(ref.SerializeToString())
    extra.graph.node.append(helper.make_node("Relu", ["y"], ["y2"], name="more"))
    with pytest.raises(ValueError, match="do not compute the same layers"):
        match_layers(ref, extra)


@pytest.fixture(scope="module")
def int8_artifact(exported_artifact, toy_data, tmp_path_factory):
    from calibration.pipeline import calibrate_artifact

    art = tmp_path_factory.mktemp("dbg") / "art"
    shutil.copytree(exported_artifact, art)
    calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", workers=0, progress=False, no_vnni_n=0)
    return art


def test_int8_layers_matched_through_qdq_and_the_no_vnni_saturation_reported(int8_artifact, tmp_path):
    res = runner.invoke(app, ["debug", str(int8_artifact), "--precision", "int8", "--n", "6", "--cpu", "no-vnni",
                              "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "debug_int8-no-vnni.json").read_text())
    assert rep["matched"] == rep["matched_by_name_too"] > 20
    gemms = [r for r in rep["layers"] if r.get("saturated_share") is not None]
    assert gemms and all(0 <= r["saturated_share"] <= 1 for r in gemms)
    assert {r["op"] for r in gemms} <= {"MatMul", "Gemm"}
    assert (tmp_path / "debug_int8-no-vnni.png").stat().st_size > 1000
    assert "## Every layer in graph order" in (tmp_path / "debug_int8-no-vnni.md").read_text()


def test_no_vnni_debug_decides_at_the_operating_point_sealed_for_such_cpus(int8_artifact, tmp_path):
    """Emulated as a CPU without VNNI computes it, int8 is decided where such a CPU decides (the sealed no-VNNI
    map), and judged natively at the VNNI one (bug: both at the VNNI map's threshold)."""
    from calibration.saturation import NoVnniEmulator
    from toolkit.artifact import Artifact
    from toolkit.layerwise import debug_artifact

    art = Artifact.open(int8_artifact)
    vnni, no_vnni = {"fp32": [0.0, 1.0], "reduced": [0.5, 1.5]}, {"fp32": [0.0, 1.0], "reduced": [-3.0, -2.0]}
    int8 = {**art.precisions["int8"], "operating_point": vnni, "operating_point_no_vnni": no_vnni}
    moved = Artifact(art.dir, {**art.manifest, "precisions": {**art.precisions, "int8": int8}})
    assert moved.threshold_for("int8") != moved.threshold_for("int8", saturating=True)
    for emulator, saturating in ((NoVnniEmulator, True), (None, False)):
        rep, _ = debug_artifact(moved, "int8", n=2, no_vnni=emulator, out_dir=tmp_path, progress=False,
                                log=lambda *_: None)  # fmt: skip
        assert rep["output_stats"]["threshold"] == pytest.approx(moved.threshold_for("int8", saturating))


def test_native_int8_on_a_cpu_without_vnni_is_debugged_as_its_saturating_kernels(int8_artifact, tmp_path, monkeypatch):
    """On x86 without VNNI `--cpu native` is what this CPU computes (saturating pair sums, emulated layer by layer),
    not the exact sums a graph with optimisations off gives; --cpu vnni asks for those."""
    monkeypatch.setattr("toolkit.machine.cpu_flags", lambda: ["avx2", "fma"])
    res = runner.invoke(app, ["debug", str(int8_artifact), "--precision", "int8", "--n", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0 and "so --cpu native is no-vnni" in " ".join(res.output.split()), res.output
    assert json.loads((tmp_path / "debug_int8-no-vnni.json").read_text())["engine"].endswith("without VNNI, emulated)")
    res = runner.invoke(app, ["debug", str(int8_artifact), "--precision", "int8", "--n", "2", "--cpu", "vnni",
                              "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0 and json.loads((tmp_path / "debug_int8.json").read_text())["engine"] == "onnxruntime"
    monkeypatch.setattr("toolkit.machine.cpu_flags", lambda: ["avx2", "fma", "avx512_vnni"])
    res = runner.invoke(app, ["debug", str(int8_artifact), "--precision", "int8", "--n", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0 and "no-vnni" not in res.output


def test_fp16_report_files_and_refusals_are_one_line(exported_artifact, purifier_artifact, tmp_path):
    res = runner.invoke(app, ["debug", str(exported_artifact), "--precision", "fp16", "--n", "4", "--out",
                              str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "debug_fp16.json").read_text())
    assert rep["output_stats"]["decision_agreement"] >= 0.5 and len(rep["top_added_error"]) == 10
    for args, msg in (
        (["--precision", "fp32"], "compares a reduced precision"),
        (["--precision", "int8"], "has no int8 variant"),
        (["--precision", "fp16", "--cpu", "no-vnni"], "--precision int8"),
        (["--precision", "fp16", "--cpu", "arm"], "--cpu takes native, vnni or no-vnni"),
        (["--precision", "fp16", "--cpu", "vnni"], "--precision int8"),
    ):
        r = runner.invoke(app, ["debug", str(exported_artifact), *args])
        assert r.exit_code == 2 and msg in " ".join(r.output.split()), (args, r.output)
    r = runner.invoke(app, ["debug", str(purifier_artifact), "--precision", "int8"])
    assert r.exit_code == 2 and "has no int8 variant" in " ".join(r.output.split())
