"""toolkit/attacks.py against references written out here: the PGD loop of Madry et al. (random start, signed
gradient step, projection onto the eps ball and [0, 1] after every step, 8-bit rounding inside the ball), the
binary cross-entropy and cosine losses by their formulas, and the success rules. Fast (a linear detector on
8x8 images), so `make mutation` runs them for every mutant of the module."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from toolkit.attacks import PGDConfig, PixelDetector, attack_loss, pgd, quantise_in_ball, success


class _Linear(nn.Module):
    """(N,3,8,8) -> (logit (N,), feature (N,4)): feature = tanh(Wx), logit = feature . v."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(3 * 8 * 8, 4, generator=g) * 0.3)
        self.v = nn.Parameter(torch.randn(4, generator=g))

    def forward(self, x):
        feat = torch.tanh(x.flatten(1) @ self.w)
        return feat @ self.v, feat


def _images(n: int = 4, seed: int = 3) -> torch.Tensor:
    """8-bit images with saturated pixels at both ends, so every clamp to [0, 1] matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g).float()
    x[:, 0, :2] = 0.0
    x[:, 1, :2] = 255.0
    return x / 255.0


def _reference_pgd(model, x, labels, eps, steps, alpha, target, random_start, seed):
    """Madry et al.'s L-inf PGD, written out independently: returns the final image and every iterate."""
    e = eps / 255.0
    g = torch.Generator().manual_seed(seed)
    start = x + (torch.rand(x.shape, generator=g) * 2 - 1) * e if random_start else x.clone()
    adv = torch.clamp(start, 0.0, 1.0)
    with torch.no_grad():
        clean_feat = model(x)[1]
    iterates = []
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        logit, feat = model(adv)
        if target == "decision":
            p = torch.sigmoid(logit)
            y = labels.float()
            loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
        else:
            loss = 1 - (feat * clean_feat).sum(-1) / (feat.norm(dim=-1) * clean_feat.norm(dim=-1))
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        with torch.no_grad():
            adv = adv + alpha * grad.sign()
            adv = torch.max(torch.min(adv, x + e), x - e)  # project onto the eps ball ...
            adv = torch.clamp(adv, 0.0, 1.0)  # ... and onto valid pixels
        iterates.append(adv.clone())
    lo = torch.clamp(torch.round(x * 255) - eps, 0, 255)
    hi = torch.clamp(torch.round(x * 255) + eps, 0, 255)
    final = torch.clamp(torch.round(adv * 255), lo, hi) / 255.0
    return final, iterates


# (embedding, no random start) is left out: at the clean image the cosine loss is at its minimum, its gradient is
# rounding noise, and its sign is not a property of the code
@pytest.mark.parametrize("target, random_start", [("decision", True), ("decision", False), ("embedding", True)])
def test_pgd_matches_the_written_out_reference(target, random_start):
    """Bugs: any change to the random start, the step direction or size, the projection, the clamp to [0, 1],
    the loss or the 8-bit rounding makes pgd differ from the reference on some pixel."""
    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    cfg = PGDConfig(eps=6, steps=5, step_size=2, target=target, random_start=random_start, seed=7)
    got = pgd(model, x, labels, cfg)
    want, _ = _reference_pgd(model, x, labels, 6, 5, 2 / 255, target, random_start, 7)
    assert torch.equal(got, want)
    assert ((got - x).abs() * 255).round().max() <= 6 and got.min() >= 0 and got.max() <= 1
    assert not torch.equal(got, x)  # the attack moved something


def test_pgd_raises_the_loss_it_attacks_and_the_seed_decides_the_start():
    """Bugs: the step taken against the gradient, or the seed ignored."""
    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    cfg = PGDConfig(eps=8, steps=10, seed=0)
    adv = pgd(model, x, labels, cfg)
    with torch.no_grad():
        before = attack_loss(model, x, x, labels, "decision")
        after = attack_loss(model, adv, x, labels, "decision")
    assert (after > before).all()
    other = pgd(model, x, labels, PGDConfig(eps=8, steps=1, seed=1))
    same = pgd(model, x, labels, PGDConfig(eps=8, steps=1, seed=0))
    assert not torch.equal(other, same)
    assert torch.equal(same, pgd(model, x, labels, PGDConfig(eps=8, steps=1, seed=0)))


def test_pgd_puts_the_model_in_eval_mode():
    """Bug: `model.eval()` dropped (dropout or batch statistics would move under the attack)."""
    model = _Linear().train()
    pgd(model, _images(), torch.tensor([0, 1, 1, 0]), PGDConfig(eps=2, steps=1))
    assert not model.training


def test_pgd_config_defaults_and_alpha():
    """Bugs: a changed default, or the default step size not 2.5 * eps / steps (in /255)."""
    cfg = PGDConfig()
    assert (cfg.eps, cfg.steps, cfg.step_size, cfg.target, cfg.random_start, cfg.seed) == (
        8.0,
        10,
        None,
        "decision",
        True,
        0,
    )
    assert math.isclose(cfg.alpha, 2.5 * 8 / 10 / 255, rel_tol=1e-12)
    assert math.isclose(PGDConfig(eps=4, steps=5, step_size=3).alpha, 3 / 255, rel_tol=1e-12)
    assert PGDConfig(eps=0, steps=1).alpha == 0.0  # the smallest accepted settings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "logits"}, r"attack target must be one of \('embedding', 'decision'\), got 'logits'"),
        ({"eps": -1}, r"need eps >= 0 and steps >= 1, got eps=-1, steps=10"),
        ({"steps": 0}, r"need eps >= 0 and steps >= 1, got eps=8.0, steps=0"),
        ({"eps": 2.5}, r"eps must be a whole number of 8-bit steps \(in /255\), got 2.5: .* same images as eps 2$"),
    ],
)
def test_pgd_config_refuses(kwargs, message):
    """Bugs: a refusal dropped, its bound moved by one, or its message garbled."""
    with pytest.raises(ValueError, match=message):
        PGDConfig(**kwargs)


def test_pixel_detector_normalises_inside_the_model():
    """Bugs: the mean or std not applied, applied the wrong way round, or with the wrong shape."""
    seen = []

    class Echo(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.sum((1, 2, 3)), x.flatten(1)

    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    det = PixelDetector(Echo(), mean, std)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    logit, feat = det(x)
    want = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], 1)
    assert torch.allclose(seen[0], want, atol=1e-7)
    assert torch.allclose(logit, want.sum((1, 2, 3)), atol=1e-5) and feat.shape == (2, 48)
    assert det.mean.dtype == torch.float32 and det.mean.shape == (1, 3, 1, 1)


def test_attack_loss_by_formula():
    """Bugs: the wrong loss for a target, a sum or mean instead of per example, the label ignored, or the cosine
    taken over the wrong axis or against the wrong reference."""
    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        _logit, feat = model(x)
        adv = x.flip(0)
        la, fa = model(adv)
        bce = attack_loss(model, adv, x, labels, "decision")
        want = torch.where(labels == 1, -torch.log(torch.sigmoid(la)), -torch.log(1 - torch.sigmoid(la)))
        assert bce.shape == (4,) and torch.allclose(bce, want, atol=1e-6)
        cos = (fa * feat).sum(-1) / (fa.norm(dim=-1) * feat.norm(dim=-1))
        emb = attack_loss(model, adv, x, labels, "embedding")
        assert emb.shape == (4,) and torch.allclose(emb, 1 - cos, atol=1e-6)
        given = torch.ones_like(feat)
        cos_given = fa.sum(-1) / (fa.norm(dim=-1) * given.norm(dim=-1))
        assert torch.allclose(attack_loss(model, adv, x, labels, "embedding", given), 1 - cos_given, atol=1e-6)


def test_quantise_in_ball_by_hand():
    """Bugs: rounding replaced by truncation, the ball's bounds off by one, or the [0, 255] clamp dropped."""
    clean = torch.tensor([0.0, 10.0, 128.0, 250.0, 255.0]) / 255
    adv = torch.tensor([-9.0, 13.4, 120.6, 262.0, 250.2]) / 255
    got = quantise_in_ball(clean, adv, 4) * 255
    assert torch.allclose(got, torch.tensor([0.0, 13.0, 124.0, 254.0, 251.0]), atol=1e-4)
    assert torch.allclose(quantise_in_ball(clean, adv, 0) * 255, clean * 255, atol=1e-4)
    assert torch.allclose(
        quantise_in_ball(clean, torch.tensor([3.0, 14.6, 0, 0, 0]) / 255, 6)[:2] * 255,
        torch.tensor([3.0, 15.0]),
        atol=1e-4,
    )


def test_success_rules():
    """Bugs: the threshold compared the wrong way, the label ignored, or the cosine drop's bound moved."""

    class Fixed(nn.Module):
        def __init__(self, logit, feat):
            super().__init__()
            self.logit, self.feat = logit, feat

        def forward(self, x):
            return (self.logit, self.feat) if x.sum() > 0 else (self.logit, torch.ones_like(self.feat))

    logit = torch.tensor([0.5, 0.5, -1.0, 2.0])
    labels = torch.tensor([1, 0, 1, 1])
    m = Fixed(logit, torch.ones(4, 3))
    x = torch.ones(4, 1)
    assert success(m, -x, x, labels, 0.5, "decision").tolist() == [True, False, True, False]
    assert success(m, -x, x, labels, 0.4, "decision").tolist() == [False, True, True, False]
    feats = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.1]])
    cos = nn.functional.cosine_similarity(feats, torch.ones(4, 3), dim=-1)  # 1, .816, .577, .999
    m = Fixed(logit, feats)
    assert success(m, -x, x, labels, 0.0, "embedding").tolist() == (cos < 0.9).tolist() == [False, True, True, False]
    assert success(m, -x, x, labels, 0.0, "embedding", min_cosine_drop=0.3).tolist() == [False, False, True, False]


def test_pixels_the_model_ignores_are_not_moved():
    """Bug: the step divided by the gradient's sign instead of multiplied (alpha / 0 is infinite: a pixel with no
    gradient would jump to the edge of the ball)."""

    class FirstChannel(nn.Module):
        def forward(self, x):
            f = x[:, :1].flatten(1)
            return f.sum(1), f

    x = _images()
    adv = pgd(FirstChannel(), x, torch.tensor([0, 1, 1, 0]), PGDConfig(eps=8, steps=3, random_start=False))
    assert torch.equal(adv[:, 1:], x[:, 1:]) and not torch.equal(adv[:, :1], x[:, :1])


def test_quantise_in_ball_at_the_ends_of_the_range():
    """Bugs: the ball's upper end allowed past 255, or its lower end lifted above 0 (eps 0 at a black pixel)."""
    clean = torch.tensor([253.0, 0.0, 0.0]) / 255
    adv = torch.tensor([258.0, 1.0, 3.0]) / 255
    got = quantise_in_ball(clean, adv, 4) * 255
    assert torch.allclose(got, torch.tensor([255.0, 1.0, 3.0]), atol=1e-4)
    assert torch.allclose(quantise_in_ball(clean, adv, 0) * 255, torch.tensor([253.0, 0.0, 0.0]), atol=1e-4)


def test_adaptive_pgd_through_the_identity_is_plain_pgd():
    """A differentiable defence is attacked through: through the identity it must be the same attack, bit for
    bit (bug: the adaptive path changes the loss, the seeds of the start, or the step)."""
    from toolkit.attacks import Defence

    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    for target in ("decision", "embedding"):  # bug: the adaptive path attacking another target
        cfg = PGDConfig(eps=8, steps=4, seed=2, target=target)
        identity = Defence(lambda v, seed: v, True)
        assert torch.equal(pgd(model, x, labels, cfg, defence=identity), pgd(model, x, labels, cfg))


def test_bpda_attacks_through_a_defence_without_gradient():
    """A defence that rounds to 4 grey levels has zero gradient almost everywhere: attacked through autograd,
    PGD (no random start) cannot move; with BPDA (identity backward) it raises the loss of the defended image.
    Bug guarded: BPDA's straight-through replaced by plain autograd, or the defence's output not used forward."""
    from toolkit.attacks import Defence

    def posterise(v, seed):
        return torch.round(v * 3) / 3

    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    cfg = PGDConfig(eps=16, steps=10, random_start=False)
    stuck = pgd(model, x, labels, cfg, defence=Defence(posterise, True))
    assert torch.equal(stuck, quantise_in_ball(x, x, 16))
    # BPDA's input: the defence's output forward, the identity's gradient backward
    v = x.clone().requires_grad_(True)
    through = Defence(posterise, False).attacked_input(v, 0)
    assert torch.equal(through.detach(), posterise(x, 0))
    (g,) = torch.autograd.grad(through.sum(), v)
    assert torch.equal(g, torch.ones_like(x))
    adv = pgd(model, x, labels, cfg, defence=Defence(posterise, False))
    with torch.no_grad():
        before = attack_loss(model, posterise(x, 0), x, labels, "decision")
        after = attack_loss(model, posterise(adv, 0), x, labels, "decision")
    assert after.sum() > before.sum()
    assert (adv - x).abs().max() <= 16 / 255 + 1e-6


def test_eot_averages_fresh_draws_that_never_use_the_evaluation_seed():
    """EOT: each step calls a stochastic defence `eot` times with distinct seeds, none of them 0 (the seed
    the evaluation uses), and different across steps; the gradient is the mean over the draws (bug: one
    draw reused, or the evaluation's noise known to the attacker)."""
    from toolkit.attacks import Defence

    seen = []

    def noisy(v, seed):
        seen.append(seed)
        g = torch.Generator().manual_seed(seed)
        return v + 0.01 * torch.randn(v.shape, generator=g)

    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    pgd(model, x, labels, PGDConfig(eps=4, steps=3), defence=Defence(noisy, True, eot=5))
    assert len(seen) == 15 and len(set(seen)) == 15 and 0 not in seen
    seen.clear()
    pgd(model, x, labels, PGDConfig(eps=4, steps=3, seed=1), defence=Defence(noisy, True, eot=5))
    assert 0 not in seen and len(set(seen)) == 15
    seen.clear()
    pgd(model, x, labels, PGDConfig(eps=4, steps=2), defence=Defence(noisy, False, eot=3))  # BPDA draws too
    assert len(set(seen)) == 6 and all(isinstance(s, int) and s != 0 for s in seen)
    with pytest.raises(ValueError, match="at least one draw"):
        Defence(noisy, True, eot=0)


def test_eot_gradient_is_the_mean_over_draws():
    """With a defence that adds a draw-dependent constant shift, the EOT step equals the step on the mean loss
    over the same draws, written out here (bug: one draw's gradient alone: its sign differs on 45 of 192
    pixels here)."""
    from toolkit.attacks import Defence

    def shift(v, seed):
        return v + (0.2 if seed % 2 else -0.2)

    model, x, labels = _Linear(), _images(), torch.tensor([0, 1, 1, 0])
    adv = pgd(
        model,
        x,
        labels,
        PGDConfig(eps=8, steps=1, random_start=False, step_size=8),
        defence=Defence(shift, True, eot=2),
    )
    d = x.clone().requires_grad_(True)
    loss = sum(attack_loss(model, shift(d, s), x, labels, "decision").sum() for s in (1, 2)) / 2
    (g,) = torch.autograd.grad(loss, d)
    want = quantise_in_ball(x, (x + 8 / 255 * g.sign()).clamp(0, 1), 8)
    assert torch.equal(adv, want)
