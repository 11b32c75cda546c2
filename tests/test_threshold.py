"""`toolkit threshold`: a new operating point chosen by the artifact's own engine, sealed with its provenance."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.artifact import Artifact
from toolkit.cli import app

runner = CliRunner()


@pytest.fixture
def artifact(exported_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    return art


def _scores(art, data):
    from toolkit.data.folders import find_labelled_images
    from toolkit.predict import PredictionPath

    ds = find_labelled_images(data)
    label_of = {str(p): y for p, y in zip(ds.paths, ds.labels, strict=True)}
    with PredictionPath(art) as path:
        batch, out = path.predict_files(ds.paths)
    return np.array([label_of[p] for p in batch.paths]), out["logit"]


def test_target_fpr_rewrites_the_sealed_manifest_with_provenance(artifact, toy_data):
    data = toy_data / "gan_b"
    before = Artifact.open(artifact)
    res = runner.invoke(app, ["threshold", str(artifact), str(data), "--target-fpr", "0.1", "--workers", "0"])
    assert res.exit_code == 0, res.output
    art = Artifact.open(artifact)  # still verifies: re-sealed, every file listed
    prov = art.manifest["threshold_provenance"]
    assert art.threshold != before.threshold
    assert prov["rule"] == "false-positive rate <= 0.1 on real images" and prov["scored_by"] == "onnxruntime fp32"
    assert prov["previous"]["threshold"] == before.threshold and len(prov["data_sha256"]) == 64
    assert prov["n_real"] + prov["n_fake"] == 24
    labels, logits = _scores(artifact, data)
    real = logits[labels == 0]
    assert (real > art.threshold).mean() <= 0.1 and (real > art.threshold - 1e-6).mean() > 0.1
    # the threshold is part of the prediction identity: outputs of the old one are not resumed
    from toolkit.predict import PredictionPath

    assert PredictionPath(artifact).identity != PredictionPath(before).identity


def test_best_acc_and_dry_run(artifact, toy_data):
    data = toy_data / "gan_b"
    manifest = (artifact / "manifest.json").read_bytes()
    res = runner.invoke(app, ["threshold", str(artifact), str(data), "--best-acc", "--dry-run", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output and (artifact / "manifest.json").read_bytes() == manifest
    res = runner.invoke(app, ["threshold", str(artifact), str(data), "--best-acc", "--workers", "0"])
    assert res.exit_code == 0, res.output
    art = Artifact.open(artifact)
    labels, logits = _scores(artifact, data)
    best = max(((logits > t) == labels).mean() for t in np.r_[logits.min() - 1, logits])
    assert ((logits > art.threshold) == labels).mean() == pytest.approx(best)
    assert art.manifest["threshold_provenance"]["rule"] == "best accuracy"


def test_an_edited_threshold_is_still_refused(artifact, toy_data):
    res = runner.invoke(app, ["threshold", str(artifact), str(toy_data / "gan_b"), "--target-fpr", "0.05",
                              "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((artifact / "manifest.json").read_text())
    m["threshold"] = -5.0
    (artifact / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="threshold"):
        Artifact.open(artifact)


def test_refusals_are_one_line(artifact, purifier_artifact, toy_data, tmp_path):
    cases = [
        (["threshold", str(artifact), str(toy_data)], "exactly one rule"),
        (["threshold", str(artifact), str(toy_data), "--target-fpr", "0.1", "--best-acc"], "exactly one rule"),
        (["threshold", str(artifact), str(toy_data), "--target-fpr", "1.5"], "must be in [0, 1)"),
        (["threshold", str(purifier_artifact), str(toy_data), "--best-acc"], "needs a detector artifact"),
        (["threshold", str(artifact), str(tmp_path / "nope"), "--best-acc"], "nope"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    only_real = tmp_path / "only_real"
    shutil.copytree(toy_data / "gan_b" / "0_real", only_real / "0_real")
    res = runner.invoke(app, ["threshold", str(artifact), str(only_real), "--best-acc", "--workers", "0"])
    assert res.exit_code == 2 and "both real and generated" in res.output
