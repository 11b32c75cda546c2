"""Perturbations, the oracle / FPR threshold rules, and `toolkit eval --perturb` on runs and artifacts."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.evaluation import binary_metrics, oracle_threshold, threshold_at_fpr
from toolkit.perturb import parse_axis, parse_chain

runner = CliRunner()


def _photo(size=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = np.stack([yy * 200, xx * 180, (xx + yy) * 90], -1) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_chain_applies_blur_before_jpeg_whatever_the_written_order():
    from scipy.ndimage import gaussian_filter

    img = _photo()
    p = parse_chain("jpeg:50+blur:2")
    assert p.name == "blur:2+jpeg:50"
    a = np.asarray(img, np.float32).copy()
    for c in range(3):
        a[..., c] = gaussian_filter(a[..., c], sigma=2)
    blurred = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    blurred.save(buf, format="JPEG", quality=50)
    want = np.asarray(Image.open(buf).convert("RGB"))
    assert np.array_equal(np.asarray(p(img).convert("RGB")), want)
    assert np.array_equal(np.asarray(parse_chain("blur:0")(img)), np.asarray(img))  # identity values
    assert parse_chain("resize:0.5")(img).size == (32, 32)
    assert [q.name for q in parse_axis("jpeg:100,75,30")] == ["jpeg:100", "jpeg:75", "jpeg:30"]


@pytest.mark.parametrize(
    "spec, message",
    [("jpeg", "expected op:value"), ("sharpen:2", "op one of"), ("jpeg:abc", "not a number"),
     ("jpeg:0", "must be in"), ("blur:1+blur:2", "appears twice")],
)  # fmt: skip
def test_bad_perturbation_specs_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_chain(spec)


def test_oracle_threshold_is_the_brute_force_best():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, n)
        logits = np.round(rng.normal(labels * 0.7, 1.0), 1)  # ties on purpose
        t, acc = oracle_threshold(labels, logits)
        assert binary_metrics(labels, logits, t)["acc"] == pytest.approx(acc)
        cands = np.concatenate([[logits.min() - 1], np.unique(logits)])
        assert acc == pytest.approx(max(((logits > c) == labels).mean() for c in cands))


def test_fpr_threshold_is_the_lowest_within_budget():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(200, int), np.ones(100, int)]
    logits = rng.normal(labels, 1.0)
    for fpr in (0.0, 0.01, 0.05, 0.2, 0.999):
        t = threshold_at_fpr(labels, logits, fpr)
        real = logits[labels == 0]
        assert (real > t).mean() <= fpr + 1e-12
        assert (real > np.nextafter(t, -np.inf)).mean() > fpr  # any lower threshold breaks the budget
    with pytest.raises(ValueError, match="real"):
        threshold_at_fpr(np.ones(3, int), np.zeros(3), 0.05)


def test_eval_perturb_on_an_artifact_scores_what_infer_runs(exported_artifact, trained_run, toy_data, tmp_path):
    from toolkit.data.folders import find_labelled_images
    from toolkit.predict import PredictionPath

    stem = tmp_path / "rob"
    res = runner.invoke(app, ["eval", str(exported_artifact), str(toy_data), "--perturb", "jpeg:90,30",
                              "--perturb", "blur:0,2", "--report", str(stem), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads(stem.with_name("rob.json").read_text())
    names = [r["perturbation"] for r in rep["rows"]]
    assert names == ["none", "jpeg:90", "jpeg:30", "blur:2"]  # blur:0 is the clean row, measured once
    assert rep["train_generators"] == ["gan_a"] and rep["scored_by"] == "onnxruntime fp32"
    # the clean row is exactly the prediction path's decisions on the same files
    ds = find_labelled_images(toy_data)
    with PredictionPath(exported_artifact) as path:
        batch, outs = path.predict_files(ds.paths)
    label_of = {str(p): y for p, y in zip(ds.paths, ds.labels, strict=True)}
    labels = np.array([label_of[p] for p in batch.paths])
    want = binary_metrics(labels, outs["logit"], rep["threshold"])
    clean = rep["rows"][0]
    assert clean["overall"] == pytest.approx(want)
    assert clean["mean_unseen"]["auc"] == pytest.approx(clean["generators"]["gan_b"]["auc"])
    shift = {r["perturbation"]: r["mean_abs_logit_change"] for r in rep["rows"]}
    assert shift["none"] == 0.0 and 0.0 < shift["jpeg:90"] < shift["jpeg:30"]  # lower quality moves scores more
    assert "oracle" in stem.with_name("rob.md").read_text()
    assert stem.with_name("rob.png").stat().st_size > 1000
    # the run (PyTorch) gives the same clean row within the fp32 export gate
    res = runner.invoke(app, ["eval", str(trained_run), str(toy_data), "--perturb", "jpeg:30",
                              "--report", str(tmp_path / "run_rob"), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run_rep = json.loads((tmp_path / "run_rob.json").read_text())
    assert run_rep["scored_by"] == "PyTorch fp32 (run)"
    assert run_rep["rows"][0]["overall"]["auc"] == pytest.approx(clean["overall"]["auc"], abs=1e-6)
    assert run_rep["rows"][1]["overall"]["acc"] == pytest.approx(rep["rows"][2]["overall"]["acc"], abs=0.03)


def test_eval_perturb_refuses_a_purifier_and_bad_specs_in_one_line(purifier_artifact, toy_data, tmp_path):
    res = runner.invoke(app, ["eval", str(purifier_artifact), str(toy_data), "--perturb", "jpeg:50",
                              "--report", str(tmp_path / "r")])  # fmt: skip
    assert res.exit_code == 2 and "needs a detector artifact" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["eval", str(purifier_artifact), str(toy_data), "--perturb", "jpeg:500"])
    assert res.exit_code == 2 and "jpeg must be in" in res.output
