import json

from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()


def test_help_for_every_command_has_an_example():
    for args in ([], ["train", "detector"], ["eval"], ["threshold"], ["data", "embedded"], ["demo"]):
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0, res.output
        assert "Example" in res.output


def test_train_and_eval_detector(toy_data, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "detector", str(toy_data / "gan_a"), "--out", str(run),
                              "--clip", "tiny-vit-32", "--epochs", "30"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "config.json", "metrics.json"}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_generators"] == ["gan_a"] and cfg["backbone"]["name"] == "tiny-vit-32"
    res = runner.invoke(app, ["eval", str(run), str(toy_data)])
    assert res.exit_code == 0, res.output
    rep = json.loads((run / "eval.json").read_text())
    assert rep["generators"]["gan_a"]["seen_in_training"] is True
    assert rep["generators"]["gan_b"]["seen_in_training"] is False
    assert rep["mean_unseen"]["auc"] == rep["generators"]["gan_b"]["auc"]
    assert rep["generators"]["gan_b"]["auc"] > 0.9  # the checkerboard is easy even for random features
    assert "| gan_b | unseen |" in (run / "eval.md").read_text()


def test_errors_are_one_clear_line(tmp_path):
    res = runner.invoke(app, ["train", "detector", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "is not a directory" in res.output
    res = runner.invoke(app, ["eval", str(tmp_path), str(tmp_path)])
    assert res.exit_code == 2 and "no config.json" in res.output


def test_checkpoint_is_safetensors_and_tampered_config_refused(toy_data, tmp_path):
    from toolkit.kinds.detector import load_run as load_detector

    run = tmp_path / "run"
    args = ["train", "detector", str(toy_data / "gan_b"), "--out", str(run), "--clip", "tiny-vit-32"]
    assert runner.invoke(app, [*args, "--epochs", "2", "--method", "probe"]).exit_code == 0
    _, cfg = load_detector(run)
    assert cfg["train"]["method"] == "probe"
    (run / "config.json").write_text(json.dumps({**cfg, "format": "other"}))
    res = runner.invoke(app, ["eval", str(run), str(toy_data)])
    assert res.exit_code == 2 and "not a detector checkpoint" in res.output


def test_corrupt_image_in_training_folder_is_named_not_fatal(toy_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_data / "gan_b", data)
    (data / "1_fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run = tmp_path / "run"
    args = ["train", "detector", str(data), "--out", str(run), "--clip", "tiny-vit-32", "--epochs", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "broken.png" in (run / "skipped.csv").read_text()
    res = runner.invoke(app, ["eval", str(run), str(data)])
    assert res.exit_code == 0, res.output
    assert "broken.png" in (run / "eval.skipped.csv").read_text()
