import numpy as np
import pytest
import torch

from toolkit.models.causal_clip import (
    CausalCLIP,
    CausalCLIPConfig,
    LinearProbe,
    build_head,
    fold_head,
    fold_mask,
    gumbel_keep_mask,
    hsic,
)
from toolkit.training.detector import TrainConfig, choose_threshold, predict_logits, train_head


def test_hsic_near_zero_for_independent_and_grows_with_dependence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    noise = torch.randn(300, 4, generator=g)
    values = [float(hsic(x, a * x + (1 - a) * noise)) for a in (0.0, 0.3, 0.6, 1.0)]
    assert values[0] < 0.01
    assert values == sorted(values), values
    assert values[-1] > 10 * values[0]


def test_hsic_needs_three_samples():
    with pytest.raises(ValueError, match="at least 3"):
        hsic(torch.zeros(2, 3), torch.zeros(2, 3))


def test_gumbel_mask_becomes_hard_as_temperature_falls():
    torch.manual_seed(0)
    logits = torch.linspace(-2, 2, 64)
    dist = []
    for tau in (5.0, 1.0, 0.1, 0.01):
        m = gumbel_keep_mask(logits, 256, tau)
        assert m.shape == (256, 64) and float(m.min()) >= 0 and float(m.max()) <= 1
        dist.append(float(torch.minimum(m, 1 - m).mean()))  # distance from {0, 1}
    assert dist == sorted(dist, reverse=True), dist
    assert dist[-1] < 0.01 < 0.1 < dist[0]
    assert float((torch.minimum(m, 1 - m) < 1e-3).float().mean()) > 0.9  # tau=0.01: almost all 0/1


def test_gumbel_keep_rate_follows_logit():
    torch.manual_seed(0)
    m = gumbel_keep_mask(torch.tensor([3.0, -3.0]), 4000, 0.05)
    assert float(m[:, 0].mean()) > 0.9 and float(m[:, 1].mean()) < 0.1


def test_folded_and_unfolded_give_identical_logits():
    torch.manual_seed(0)
    model = CausalCLIP(CausalCLIPConfig(feature_dim=32))
    with torch.no_grad():
        model.mask_logits.copy_(torch.randn(32))
        model.head.weight.copy_(torch.randn(1, 32))
    f = torch.nn.functional.normalize(torch.randn(17, 32), dim=-1)
    folded = fold_mask(model)
    assert 0 < model.keep_fraction() < 1
    assert torch.equal(model(f), folded(f).squeeze(-1))


def _anisotropic(n=400, d=32, seed=0):
    """Features like a CLIP encoder's (random weights measured |mean| 0.946 of the unit norm, per-dimension std
    0.037, max 0.10): one shared direction dominates, the spread differs by dimension, and the label lives in
    the 8 quietest dimensions (0.8 of their own spread each)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scale = np.logspace(-1, -3, d)
    x = scale * rng.normal(0, 1, (n, d))
    x[:, 0] = 1.0  # the shared direction
    x[:, -8:] += 0.8 * scale[-8:] * (2 * y - 1)[:, None]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("method", ["causal", "probe"])
def test_fold_with_standardisation_gives_the_head_logits(method):
    x, y = _anisotropic()
    head, _ = train_head(x, y, CausalCLIPConfig(feature_dim=32), TrainConfig(method=method, epochs=5), progress=False)
    assert head.standardiser is not None and float(head.standardiser.std.max()) < 0.1  # fitted, not identity
    f = torch.from_numpy(x)
    with torch.no_grad():
        a, b = head(f), fold_head(head)(f).squeeze(-1)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-5), float((a - b).abs().max())


@pytest.mark.parametrize("method", ["causal", "probe"])
def test_standardised_heads_learn_anisotropic_features_raw_heads_do_not(method):
    """The root cause of the probe's 60.6 in-family AUC on random-weight features: with raw features the same
    optimiser and steps cannot fit a direction the spread hides (before standardisation this failed)."""
    x, y = _anisotropic()
    accs = {}
    for std in (True, False):
        cfg = CausalCLIPConfig(feature_dim=32, standardise=std)
        head, _ = train_head(x, y, cfg, TrainConfig(method=method, epochs=40, batch_size=64), progress=False)
        logits = predict_logits(head, x)
        accs[std] = ((logits > choose_threshold(y, logits)) == y).mean()
    assert accs[True] > 0.9 and accs[True] > accs[False] + 0.1, accs


def test_configs_without_the_field_load_as_raw_feature_heads():
    """Runs trained before standardisation existed: their config has no `standardise` and their weights no
    statistics; they load and keep their logits."""
    cfg = CausalCLIPConfig.from_dict({"feature_dim": 8})
    assert cfg.standardise is False and CausalCLIPConfig(feature_dim=8).standardise is True
    old = build_head("probe", cfg)
    assert set(old.state_dict()) == {"head.weight", "head.bias"}
    assert build_head("prompt", CausalCLIPConfig(feature_dim=8)).standardiser is None  # cosine head: raw features


def _separable(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d))
    x[:, 0] += 3 * (2 * y - 1)  # the label lives in dim 0 only
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("method", ["causal", "probe"])
def test_tiny_training_learns_a_separable_toy_set(method):
    x, y = _separable()
    cfg = CausalCLIPConfig(feature_dim=16)
    head, hist = train_head(x, y, cfg, TrainConfig(method=method, epochs=40, batch_size=64), progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    logits = predict_logits(head, x)
    t = choose_threshold(y, logits)
    assert ((logits > t) == y).mean() > 0.95
    if method == "causal":
        assert head.hard_mask()[0] == 1  # the label-carrying dimension is kept
        assert isinstance(head, CausalCLIP)
    else:
        assert isinstance(head, LinearProbe)


def test_training_refuses_one_class():
    with pytest.raises(ValueError, match="both real"):
        train_head(np.zeros((8, 4), np.float32), np.zeros(8), CausalCLIPConfig(feature_dim=4), TrainConfig())


def test_choose_threshold_balances_accuracy():
    y = np.array([0, 0, 0, 1, 1, 1])
    logits = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    t = choose_threshold(y, logits)
    assert -1.0 <= t < 1.0
