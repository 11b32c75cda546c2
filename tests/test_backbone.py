import pytest
import torch

from toolkit.models.backbone import BackboneConfig, load_backbone, save_open_clip_checkpoint


def test_tiny_preset_through_open_clip(tiny_backbone):
    assert tiny_backbone.preprocess_cfg.size == 32
    f = tiny_backbone(torch.randn(3, 3, 32, 32))
    assert f.shape == (3, tiny_backbone.feature_dim)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(3))
    assert not any(p.requires_grad for p in tiny_backbone.parameters())


def test_local_safetensors_checkpoint_loads_through_open_clip(tmp_path):
    path = save_open_clip_checkpoint("tiny-vit-32", tmp_path / "ckpt.safetensors", seed=3)
    a = load_backbone(BackboneConfig(name="tiny-vit-32", pretrained=str(path)))
    b = load_backbone(BackboneConfig(name="tiny-vit-32", seed=3))  # same random init
    c = load_backbone(BackboneConfig(name="tiny-vit-32", seed=4))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    assert a.identity.startswith("tiny-vit-32|file-sha256:")


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError, match=r"only \.safetensors"):
        load_backbone(BackboneConfig(name="tiny-vit-32", pretrained=str(pt)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(BackboneConfig(name="tiny-vit-32", pretrained=str(tmp_path / "nope.safetensors")))
    wrong = save_open_clip_checkpoint("tiny-vit-64", tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="does not match CLIP model tiny-vit-32"):
        load_backbone(BackboneConfig(name="tiny-vit-32", pretrained=str(wrong)))


def test_unknown_model_and_tag():
    with pytest.raises(ValueError, match="unknown CLIP model"):
        load_backbone(BackboneConfig(name="ViT-Nope"))
    with pytest.raises(ValueError, match="no pretrained tag"):
        load_backbone(BackboneConfig(name="tiny-vit-32", pretrained="openai"))


def test_a_real_architecture_without_weights_is_named_random_at_training(toy_data, tmp_path, monkeypatch):
    """Issue 25: nothing said the weights were random when --pretrained was left out."""
    from typer.testing import CliRunner

    from toolkit.cli import app
    from toolkit.models.backbone import random_weights_warning

    assert random_weights_warning(BackboneConfig(name="tiny-vit-32")) is None
    assert random_weights_warning(BackboneConfig(name="ViT-L-14", pretrained="openai")) is None
    assert "ViT-L-14 has random weights" in random_weights_warning(BackboneConfig(name="ViT-L-14"))
    import toolkit.pipelines.detector as det

    monkeypatch.setattr(det, "train_detector", lambda *a, **k: (_ for _ in ()).throw(ValueError("stopped here")))
    res = CliRunner().invoke(app, ["train", "detector", str(toy_data), "--clip", "ViT-B-16", "--out",
                                   str(tmp_path / "run")])  # fmt: skip
    assert "ViT-B-16 has random weights" in " ".join(res.output.split()) and "stopped here" in res.output
