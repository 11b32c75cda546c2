"""Calibration memory: sized from the graph before anything runs, refused in one line when it cannot fit, and flat in
the number of calibration images (issue 25: ViT-L/14 calibration ran a 24 GB machine out of memory)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from calibration import memory
from calibration.memory import DoesNotFit, GraphSizes, choose_batch, estimate, graph_sizes
from toolkit.artifact import Artifact
from toolkit.cli import app

TOKENS, WIDTH = 256, 512
TENSOR = TOKENS * WIDTH * 4  # bytes of one activation per image


def _mlp(path, tokens=TOKENS, width=WIDTH):
    """x[N, tokens, width] -> MatMul -> Relu -> MatMul -> y: four activations of `tokens*width` floats per image."""
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.normal(0, 0.05, (width, width)).astype(np.float32), n) for n in "ab")
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "b"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens, width])],
        [w1, w2],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_graph_sizes_count_weights_live_and_calibrated_activations_per_image(tmp_path):
    s = graph_sizes(_mlp(tmp_path / "m.onnx"), ("MatMul",))
    assert s.weights == 2 * WIDTH * WIDTH * 4
    assert s.calibrated == 4 * TENSOR  # x, h, r, y: inputs and outputs of the two MatMuls
    assert s.peak_live == 2 * TENSOR  # a producer's input and output, never three at once
    assert s.largest == TENSOR


def test_the_batch_is_chosen_to_fit_and_an_oversized_run_is_refused_with_what_fits():
    gib = memory.GIB
    sizes = GraphSizes(weights=gib, peak_live=20 * memory.MIB, calibrated=2000 * memory.MIB, largest=4 * memory.MIB)
    assert choose_batch(sizes, "minmax", None, available=64 * gib).batch == 16
    # entropy holds every calibrated tensor of a batch: the automatic batch keeps that under the budget
    auto = choose_batch(sizes, "entropy", None, available=64 * gib)
    assert auto.batch == 1 and auto.collect > estimate(sizes, "minmax", 1).collect
    with pytest.raises(DoesNotFit, match=r"--calib-batch 4 \(about"):
        choose_batch(sizes, "entropy", 16, available=estimate(sizes, "entropy", 4).peak + 1)
    with pytest.raises(DoesNotFit, match="use --method minmax"):
        choose_batch(sizes, "entropy", 1, available=estimate(sizes, "minmax", 1).peak + 1)
    with pytest.raises(DoesNotFit, match="free memory or use a machine with more"):
        choose_batch(sizes, "minmax", 1, available=gib)


def test_calibrate_that_cannot_fit_exits_1_in_one_line_before_writing(exported_artifact, toy_data, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    import shutil

    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    before = sorted(p.name for p in tmp_path.iterdir())
    seal = Artifact.open(art).seal
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * memory.MIB)
    res = CliRunner().invoke(app, ["calibrate", str(art), "--images", str(toy_data / "gan_a"), "--eval-images",
                                   str(toy_data / "gan_b")])  # fmt: skip
    assert res.exit_code == 1, res.output
    line = " ".join(res.output.split())
    assert "calibration would need about" in line and "is available" in line and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no staging directory was made
    assert Artifact.open(art).seal == seal


_COLLECT = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    import numpy as np
    from calibration.quantize import QuantConfig, collect_ranges

    def rss(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    model, method, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    def batches():
        for i in range(0, n, batch):
            yield rng.normal(0, 1, (min(batch, n - i), TOKENS, WIDTH)).astype(np.float32)
    collect_ranges(model, iter([next(batches())[:1]]), "x", QuantConfig(method=method), Path(tempfile.mkdtemp()))
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM restarts from the current RSS
    base = rss("VmRSS:")
    ranges = collect_ranges(model, batches(), "x", QuantConfig(method=method), Path(tempfile.mkdtemp()))
    print(json.dumps({"growth": rss("VmHWM:") - base, "tensors": len(ranges.data)}))
    """
).replace("TOKENS, WIDTH", f"{TOKENS}, {WIDTH}")


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_memory_is_flat_in_the_number_of_images(tmp_path, method):
    """Peak memory of the collection at 8x the images stays within 1.2x (+ 8 MiB of allocator noise): held
    activations would add 4 MiB per image, 224 MiB between 8 and 64 images."""
    model = _mlp(tmp_path / "m.onnx")

    def growth(n: int) -> int:
        r = subprocess.run([sys.executable, "-c", _COLLECT, str(model), method, str(n), "4"], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["tensors"] == 4
        return out["growth"]

    small, large = growth(8), growth(64)
    assert large <= 1.2 * small + 8 * memory.MIB, (small / memory.MIB, large / memory.MIB)
