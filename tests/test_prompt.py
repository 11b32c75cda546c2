"""`--method prompt`: CoOp context through the frozen text tower, folded into one linear unit at training end."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def prompt_run(toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("prompt") / "run"
    res = runner.invoke(app, ["train", "detector", str(toy_data / "gan_a"), "--out", str(run), "--method", "prompt",
                              "--clip", "tiny-vit-32", "--epochs", "40"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return run


def test_folded_head_gives_the_unfolded_prompt_logits(prompt_run):
    from toolkit.kinds.detector import load_run
    from toolkit.models.prompt import load_prompt

    head, config = load_run(prompt_run)
    assert config["train"]["method"] == "prompt" and config["prompt"]["class_names"] == ["real", "generated"]
    unfolded = load_prompt(prompt_run)
    f = torch.nn.functional.normalize(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        a, b = unfolded(f), head(f)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    assert float(head.head.bias.detach()) == 0.0
    # the context was trained: the loss went down and the logit is not the untrained one
    hist = json.loads((prompt_run / "metrics.json").read_text())["history"]
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.01


def test_prompt_run_exports_gates_and_infers_like_any_detector(prompt_run, toy_data, tmp_path):
    from export.core import export_run
    from toolkit.data.folders import find_labelled_images
    from toolkit.kinds.detector import load_deployed
    from toolkit.predict import PredictionPath

    # gated on real images: seeded noise lands all its logits in a narrow band, and where the prompt head's
    # threshold falls inside it, fp16's rounding flips 1-2 of 64 noise decisions (measured: 98.4% agreement)
    art = export_run(prompt_run, tmp_path / "art", verify_images=toy_data, log=lambda *_: None)
    gates = json.loads((tmp_path / "art" / "manifest.json").read_text())["precisions"]
    assert set(gates) >= {"fp32", "fp16"}
    ds = find_labelled_images(toy_data / "gan_b")
    with PredictionPath(tmp_path / "art") as path:
        batch, out = path.predict_files(ds.paths)
    model, _ = load_deployed(prompt_run)
    with torch.no_grad():
        ref = model(torch.from_numpy(batch.array))[0].numpy()
    assert np.abs(out["logit"] - ref).max() <= 1e-4
    assert art is not None
    res = runner.invoke(app, ["infer", str(toy_data / "gan_b"), "--artifact", str(tmp_path / "art"),
                              "--out", str(tmp_path / "p.csv"), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + len(ds.paths)


def test_a_prompt_that_does_not_fit_is_one_line(toy_data, tmp_path):
    res = runner.invoke(app, ["train", "detector", str(toy_data / "gan_a"), "--out", str(tmp_path / "r"),
                              "--method", "prompt", "--clip", "tiny-vit-32", "--prompt-ctx", "6"])  # fmt: skip
    assert res.exit_code == 2 and "this CLIP's text context holds 8" in res.output and "Traceback" not in res.output


def test_adversarial_prompt_tuning_trains_on_attacked_features(toy_data, tiny_backbone, tmp_path):
    """APT: the adversary really attacks the head as it is (its features raise that head's loss), training sees
    them every refresh, the run records the attack, and the run still folds and exports like any detector."""
    from toolkit.data.folders import find_labelled_images
    from toolkit.kinds.detector import load_run
    from toolkit.pipelines.detector import encode, feature_adversary
    from toolkit.training.detector import TrainConfig

    res = runner.invoke(app, ["train", "detector", str(toy_data / "gan_a"), "--out", str(tmp_path / "apt"),
                              "--method", "prompt", "--clip", "tiny-vit-32", "--epochs", "6", "--adv-eps", "8",
                              "--adv-refresh", "3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    head, config = load_run(tmp_path / "apt")
    assert (config["train"]["adv_eps"], config["train"]["adv_refresh"]) == (8, 3)
    hist = json.loads((tmp_path / "apt" / "metrics.json").read_text())["history"]
    assert all("adv_bce" in h for h in hist)

    enc = encode(find_labelled_images(toy_data / "gan_a"), tiny_backbone, None, progress=False)
    adversary = feature_adversary(enc, tiny_backbone, TrainConfig(method="prompt", adv_eps=8, adv_steps=5))
    adv = adversary(head, 0)
    assert adv.shape == enc.features.shape and not np.allclose(adv, enc.features)
    y = torch.from_numpy(enc.labels.astype(np.float32))
    with torch.no_grad():
        clean_loss = torch.nn.functional.binary_cross_entropy_with_logits(head(torch.from_numpy(enc.features)), y)
        adv_loss = torch.nn.functional.binary_cross_entropy_with_logits(head(torch.from_numpy(adv)), y)
    assert float(adv_loss) > float(clean_loss), (float(adv_loss), float(clean_loss))


def test_adversarial_training_needs_images_and_whole_eps():
    from toolkit.models.causal_clip import CausalCLIPConfig
    from toolkit.training.detector import TrainConfig, train_head

    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), np.array([0, 1] * 4)
    with pytest.raises(ValueError, match="needs the images"):
        train_head(x, y, CausalCLIPConfig(feature_dim=4), TrainConfig(method="probe", adv_eps=4), progress=False)
    with pytest.raises(ValueError, match="whole number"):
        TrainConfig(adv_eps=2.5)
