"""toolkit/models/causal_clip.py's arithmetic against references written out here: the biased HSIC estimator with
an explicit centring matrix, the RBF kernel's median heuristic, the standardiser's population statistics, the fold
of standardisation into the head, the temperature schedule, the loss's parts, and the config's defaults and
back-compatibility. Fast (no backbone, no training), for `make mutation`."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.models.causal_clip import (
    METHODS,
    PRESETS,
    CausalCLIP,
    CausalCLIPConfig,
    FeatureStandardiser,
    LinearProbe,
    _fold_linear,
    anneal_tau,
    build_head,
    fold_head,
    gumbel_keep_mask,
    hsic,
    rbf_kernel,
)


def _x(n=7, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _ref_rbf(x, sigma2):
    d2 = torch.cdist(x, x) ** 2
    return torch.exp(-d2 / (2 * sigma2))


def _ref_hsic(k, g):
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - torch.ones(n, n, dtype=k.dtype) / n
    return torch.trace(k @ h @ g @ h) / (n - 1) ** 2


def test_rbf_kernel_median_heuristic_and_fixed_bandwidth():
    """Bugs: the median taken over the diagonal too, sigma^2 not median / 2, or a fixed bandwidth not squared."""
    x = _x()
    d2 = torch.cdist(x, x) ** 2
    off = d2[~torch.eye(7, dtype=torch.bool)]
    assert torch.allclose(rbf_kernel(x), _ref_rbf(x, off.median() / 2), atol=1e-10)
    assert torch.allclose(rbf_kernel(x, 1.5), _ref_rbf(x, torch.tensor(2.25, dtype=torch.float64)), atol=1e-10)
    same = torch.ones(4, 2, dtype=torch.float64)  # every distance 0: sigma^2 clamped, not 0 / 0
    assert torch.allclose(rbf_kernel(same), torch.ones(4, 4, dtype=torch.float64))


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_hsic_is_the_biased_estimator(kernel):
    """Bugs: the centring, the (n - 1)^2 normaliser, or the linear kernel's Gram matrices changed."""
    x, y = _x(seed=1), _x(d=2, seed=2) + 0.5 * _x(seed=1)[:, :2]
    want = _ref_hsic(rbf_kernel(x), rbf_kernel(y)) if kernel == "rbf" else _ref_hsic(x @ x.T, y @ y.T)
    assert torch.allclose(hsic(x, y, kernel=kernel), want, atol=1e-12)
    assert torch.allclose(hsic(x, y, 0.7), _ref_hsic(_ref_rbf(x, 0.49), _ref_rbf(y, 0.49)), atol=1e-12)
    hsic(x[:3], y[:3])  # three samples are enough
    with pytest.raises(ValueError, match="HSIC needs at least 3 samples, got 2"):
        hsic(x[:2], y[:2])


def test_standardiser_uses_population_statistics_and_never_divides_by_zero():
    st = FeatureStandardiser(3)
    assert torch.equal(st.mean, torch.zeros(3)) and torch.equal(st.std, torch.ones(3))
    f = torch.tensor([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0], [5.0, 2.0, 5.0]])
    st.fit(f)
    assert torch.allclose(st.mean, torch.tensor([3.0, 2.0, 5.0]))
    assert torch.allclose(st.std, torch.tensor([math.sqrt(8 / 3), 1e-6, 1e-6]))
    assert torch.allclose(st(f)[:, 0], (f[:, 0] - 3.0) / math.sqrt(8 / 3))
    assert dict(st.named_buffers()).keys() == {"mean", "std"} and not list(st.parameters())


def test_fold_linear_by_formula():
    """Bugs: the weight not divided by std, or the bias not shifted by (w / std) . mean."""
    w = torch.tensor([[2.0, -1.0, 0.5]])
    b = torch.tensor([0.25])
    st = FeatureStandardiser(3)
    st.mean.copy_(torch.tensor([1.0, 2.0, -1.0]))
    st.std.copy_(torch.tensor([2.0, 0.5, 4.0]))
    lin = _fold_linear(w, b, st)
    assert torch.allclose(lin.weight, torch.tensor([[1.0, -2.0, 0.125]]))
    assert torch.allclose(lin.bias, torch.tensor([0.25 - (1.0 * 1.0 + -2.0 * 2.0 + 0.125 * -1.0)]))
    raw = _fold_linear(w, b, None)
    assert torch.equal(raw.weight, w) and torch.equal(raw.bias, b)
    f = torch.randn(5, 3)
    assert torch.allclose(lin(f).squeeze(-1), ((f - st.mean) / st.std) @ w[0] + b, atol=1e-5)


def test_anneal_tau_is_exponential_between_its_ends():
    """Bugs: linear instead of exponential annealing, the ends off by one step, or steps outside not clamped."""
    assert anneal_tau(0, 11, 1.0, 0.01) == pytest.approx(1.0)
    assert anneal_tau(10, 11, 1.0, 0.01) == pytest.approx(0.01)
    assert anneal_tau(5, 11, 1.0, 0.01) == pytest.approx(0.1)  # the geometric midpoint
    assert anneal_tau(-3, 11, 1.0, 0.01) == pytest.approx(1.0) and anneal_tau(99, 11, 1.0, 0.01) == pytest.approx(0.01)
    assert anneal_tau(0, 1, 1.0, 0.05) == 0.05 and anneal_tau(0, 0, 1.0, 0.05) == 0.05
    assert anneal_tau(1, 3, 4.0, 1.0) == pytest.approx(2.0)


def test_gumbel_keep_mask_shapes_and_hard_samples():
    torch.manual_seed(0)
    logits = torch.tensor([10.0, -10.0, 0.0])
    soft = gumbel_keep_mask(logits, 4, tau=0.5)
    assert soft.shape == (4, 3) and ((soft >= 0) & (soft <= 1)).all()
    hard = gumbel_keep_mask(logits, 64, tau=0.5, hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert hard[:, 0].mean() > 0.95 and hard[:, 1].mean() < 0.05  # keep logit 10: kept; -10: dropped


def test_config_defaults_back_compat_and_refusal():
    """Bugs: a default moved, an old config (no `standardise`) loaded as standardised, an unknown key crashing the
    load, or a bad kernel accepted."""
    c = CausalCLIPConfig()
    assert (c.feature_dim, c.init_keep_logit, c.tau_start, c.tau_end, c.straight_through) == (
        768,
        0.5,
        1.0,
        0.05,
        False,
    )
    assert (c.hsic_weight, c.noncausal_weight, c.keep_ratio, c.budget_weight) == (1.0, 0.1, 0.5, 1.0)
    assert (c.hsic_bandwidth, c.hsic_kernel, c.hsic_project, c.standardise) == ("median", "rbf", 0, True)
    assert CausalCLIPConfig.from_dict(c.to_dict()) == c
    old = CausalCLIPConfig.from_dict({"feature_dim": 32, "from_the_future": 1})
    assert old.feature_dim == 32 and old.standardise is False
    with pytest.raises(ValueError, match="hsic_kernel must be rbf or linear, got 'poly'"):
        CausalCLIPConfig(hsic_kernel="poly")
    assert {k: v.feature_dim for k, v in PRESETS.items()} == {
        "causal-vit-l-14": 768,
        "causal-vit-b-16": 512,
        "causal-tiny": 64,
    }


def test_model_mask_forward_and_projection():
    cfg = CausalCLIPConfig(feature_dim=4, init_keep_logit=-1.0, standardise=False, hsic_project=3)
    m = CausalCLIP(cfg)
    assert torch.equal(m.mask_logits.detach(), torch.full((4,), -1.0)) and m.standardiser is None
    assert m.keep_fraction() == 0.0
    with torch.no_grad():
        m.mask_logits.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0]))
    assert m.hard_mask().tolist() == [1.0, 0.0, 0.0, 1.0] and m.keep_fraction() == 0.5
    f = torch.randn(5, 4)
    want = (f * m.hard_mask()) @ m.head.weight[0] + m.head.bias
    assert torch.allclose(m(f), want, atol=1e-6) and m(f).shape == (5,)
    assert m.hsic_proj.shape == (4, 3) and torch.equal(m.hsic_proj, CausalCLIP(cfg).hsic_proj)
    assert "hsic_proj" not in m.state_dict()
    assert CausalCLIP(CausalCLIPConfig(feature_dim=4)).hsic_proj is None
    assert isinstance(CausalCLIP(CausalCLIPConfig(feature_dim=4)).standardiser, FeatureStandardiser)


def test_loss_parts():
    """Bugs: a loss term dropped, added with the wrong weight, or reported under the wrong name; the budget not
    (mean keep probability - keep ratio)^2."""
    torch.manual_seed(0)
    f, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    bare = CausalCLIP(
        CausalCLIPConfig(feature_dim=4, hsic_weight=0, noncausal_weight=0, budget_weight=0, standardise=False)
    )
    total, parts = bare.loss(f, y, tau=0.5)
    assert set(parts) == {"bce", "loss"} and parts["loss"] == pytest.approx(parts["bce"])
    cfg = CausalCLIPConfig(
        feature_dim=4,
        hsic_weight=2.0,
        noncausal_weight=0.5,
        budget_weight=3.0,
        keep_ratio=0.25,
        init_keep_logit=0.0,
        standardise=False,
        straight_through=True,
    )
    m = CausalCLIP(cfg)
    total, parts = m.loss(f, y, tau=0.5)
    assert set(parts) == {"bce", "hsic", "noncausal", "keep", "loss"}
    assert parts["keep"] == pytest.approx(0.5)  # sigmoid(0)
    budget = (0.5 - 0.25) ** 2
    # the confusion term is not reported on its own: what is left of the total after the others
    confuse = (parts["loss"] - parts["bce"] - 2.0 * parts["hsic"] - 3.0 * budget) / 0.5 - parts["noncausal"]
    assert confuse > 0 and total.item() == pytest.approx(parts["loss"])
    assert parts["hsic"] >= 0
    total.backward()
    assert m.mask_logits.grad is not None and m.aux_head.weight.grad is not None


def test_probe_build_and_fold():
    """Bugs: the probe's standardisation not applied or not folded, a method refused or the prompt head
    standardised."""
    p = LinearProbe(3, standardise=True)
    p.standardiser.fit(torch.randn(20, 3) * 3 + 1)
    f = torch.randn(6, 3)
    assert torch.allclose(fold_head(p)(f).squeeze(-1), p(f), atol=1e-5)
    loss, parts = p.loss(f, torch.tensor([0, 1] * 3))
    assert set(parts) == {"bce", "loss"} and parts["bce"] == pytest.approx(loss.item())
    assert METHODS == ("causal", "probe", "prompt")
    assert LinearProbe(3).standardiser is None  # a probe standardises only when asked
    cfg = CausalCLIPConfig(feature_dim=3)
    assert isinstance(build_head("causal", cfg), CausalCLIP)
    assert build_head("probe", cfg).standardiser is not None and build_head("prompt", cfg).standardiser is None
    assert build_head("probe", CausalCLIPConfig(feature_dim=3, standardise=False)).standardiser is None
    with pytest.raises(ValueError, match=r"method must be one of \('causal', 'probe', 'prompt'\), got 'svm'"):
        build_head("svm", cfg)

    class Folds:
        def fold(self):
            return "folded"

    assert fold_head(Folds()) == "folded"


def _ref_loss(m: CausalCLIP, f, y, tau, seed):
    """The training loss written out term by term (the mask drawn from the same seed as the model's call)."""
    import torch.nn.functional as F

    cfg = m.cfg
    torch.manual_seed(seed)
    mask = gumbel_keep_mask(m.mask_logits, f.shape[0], tau, hard=cfg.straight_through)
    z = f if m.standardiser is None else m.standardiser(f)
    c, n = mask * z, (1 - mask) * z
    y = y.float()
    w, b = m.head.weight[0], m.head.bias[0]
    total = F.binary_cross_entropy_with_logits(c @ w + b, y)
    hc, hn = (c @ m.hsic_proj, n @ m.hsic_proj) if m.hsic_proj is not None else (c, n)
    if cfg.hsic_kernel == "linear":
        k, g = hc @ hc.T, hn @ hn.T
    else:
        bw = cfg.hsic_bandwidth

        def sigma2(v):
            if bw != "median":
                return float(bw) ** 2
            d2 = torch.cdist(v, v) ** 2
            return (d2[~torch.eye(len(v), dtype=torch.bool)].median() / 2).clamp_min(1e-12)

        k, g = _ref_rbf(hc, sigma2(hc)), _ref_rbf(hn, sigma2(hn))
    total = total + cfg.hsic_weight * _ref_hsic(k, g)
    aux = n @ m.aux_head.weight[0] + m.aux_head.bias[0]
    aux_fit = F.binary_cross_entropy_with_logits(aux, y)
    confuse = F.binary_cross_entropy_with_logits(aux, torch.full_like(y, 0.5))
    total = total + cfg.noncausal_weight * (aux_fit + confuse)
    keep = torch.sigmoid(m.mask_logits).mean()
    return total + cfg.budget_weight * (keep - cfg.keep_ratio) ** 2


@pytest.mark.parametrize(
    "kw",
    [
        {"straight_through": True, "hsic_kernel": "linear", "hsic_project": 1},
        {"straight_through": False, "hsic_bandwidth": "0.7", "init_keep_logit": 1.5},
    ],
    ids=["hard-linear-projected", "soft-fixed-bandwidth"],
)
def test_loss_equals_its_terms_written_out(kw):
    """Each weight below 1 and each term checked by value against `_ref_loss` (the mutation run found the
    loss's terms unchecked: a sign, a weight applied as a divisor, the budget cubed, the confusion target, the
    aux bias dropped, the hard mask or the projection skipped, the kernel or the bandwidth ignored)."""
    torch.manual_seed(3)
    cfg = CausalCLIPConfig(feature_dim=6, hsic_weight=0.5, noncausal_weight=0.25, budget_weight=0.75,
                           keep_ratio=0.3, standardise=False, **kw)  # fmt: skip
    m = CausalCLIP(cfg)
    with torch.no_grad():
        m.aux_head.bias.fill_(0.4)
        m.mask_logits.add_(torch.linspace(-1, 1, 6))
    f, y = torch.randn(9, 6), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    torch.manual_seed(11)
    total, parts = m.loss(f, y, tau=0.5)
    want = _ref_loss(m, f, y, 0.5, 11)
    assert total.item() == pytest.approx(want.item(), rel=1e-6) and parts["loss"] == pytest.approx(want.item())


def test_loss_gradients_reach_the_mask_but_not_through_the_aux_heads_fit():
    """aux_fit trains the aux head on a detached n; the confusion term trains the mask through frozen aux
    weights (bugs: detach dropped or moved)."""
    cfg = CausalCLIPConfig(feature_dim=5, hsic_weight=0.0, budget_weight=0.0, noncausal_weight=1.0, standardise=False)
    m = CausalCLIP(cfg)
    f, y = torch.randn(6, 5), torch.tensor([0, 1, 0, 1, 0, 1])
    m.head.weight.data.zero_()
    m.head.bias.data.zero_()  # the bce term then carries no gradient to the mask
    total, _ = m.loss(f, y, tau=0.5)
    total.backward()
    assert m.mask_logits.grad is not None and m.mask_logits.grad.abs().sum() > 0  # through the confusion term
    assert m.aux_head.weight.grad.abs().sum() > 0


def test_rbf_median_bandwidth_below_one_and_fixed_bandwidth_exact():
    """Bugs: sigma^2 clamped at ~1 instead of 1e-12 (features at a scale of 0.01 have median d^2 / 2 far below
    1), or a fixed bandwidth squared in float32 (0.7^2 is not exact there)."""
    x = _x() * 0.01
    d2 = torch.cdist(x, x) ** 2
    sigma2 = d2[~torch.eye(7, dtype=torch.bool)].median() / 2
    assert sigma2 < 1e-3
    assert torch.allclose(rbf_kernel(x), _ref_rbf(x, sigma2), rtol=0, atol=1e-12)
    y = _x(seed=4)
    assert torch.allclose(rbf_kernel(y, 0.7), _ref_rbf(y, 0.7**2), rtol=0, atol=1e-15)


def test_anneal_tau_with_two_steps_and_the_fixed_projection():
    """Bugs: a two-step schedule collapsed to its end, the projection's seed or 1/sqrt(k) scale changed, or a
    one-dimensional projection skipped."""
    assert anneal_tau(0, 2, 1.0, 0.05) == pytest.approx(1.0) and anneal_tau(1, 2, 1.0, 0.05) == pytest.approx(0.05)
    m = CausalCLIP(CausalCLIPConfig(feature_dim=4, hsic_project=1, standardise=False))
    want = torch.randn(4, 1, generator=torch.Generator().manual_seed(0)) / math.sqrt(1)
    assert m.hsic_proj is not None and torch.equal(m.hsic_proj, want)
    m3 = CausalCLIP(CausalCLIPConfig(feature_dim=4, hsic_project=3, standardise=False))
    assert torch.allclose(m3.hsic_proj, torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) / math.sqrt(3))
