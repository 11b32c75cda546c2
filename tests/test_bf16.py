"""bf16 as a gated artifact precision: the fp32 graph executed in bf16 by OpenVINO, refused where the CPU
lacks bf16; once gated it passes the engine contract and is a candidate for --engine auto."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.artifact import Artifact
from toolkit.cli import app
from toolkit.engines import open_engine

pytest.importorskip("openvino")


def test_bf16_is_gated_recorded_and_runs_on_openvino_only(exported_artifact, toy_data, tmp_path):
    from toolkit.engines.openvino_engine import bf16_unavailable_reason

    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    run = Artifact.open(art).manifest["source_run"]
    args = ["export", run, "--out", str(art), "--precision", "fp32", "--precision", "bf16"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "needs --eval-images" in res.output  # refused before any work
    res = CliRunner().invoke(app, [*args, "--eval-images", str(toy_data / "gan_b")])
    if bf16_unavailable_reason():
        assert res.exit_code == 2 and "bf16 refused" in res.output
        return
    assert res.exit_code == 0 and "bf16 gate passed (OpenVINO)" in res.output, res.output
    a = Artifact.open(art)
    rec = dict(a.precisions["bf16"])
    op = rec.pop("operating_point")  # its own threshold, at fp32's false-positive rate (issue 24)
    assert rec == {"file": "detector.fp32.onnx", "execution": "bf16", "engines": ["openvino"]}
    assert op["n_real"] > 0 and len(op["fp32"]) == len(op["reduced"]) and a.threshold_for("bf16") is not None
    g = a.gates["bf16"]
    assert g["passed"] and g["stats"]["min_cosine_feature"] >= 0.999 and g["stats"]["auc_drop_points"] <= 0.3
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_engine(a, "openvino", "bf16") as e:
        assert e.execution == "bf16" and e.infer({"images": x})["logit"].shape == (4,)
    with pytest.raises(ValueError, match="bf16 runs on openvino only"):
        open_engine(a, "onnxruntime", "bf16")
