"""The multi-seed / ablation protocol on a small embedded benchmark: fixed images and encoder, seeds move heads."""

import numpy as np
import pytest
import torch

from toolkit.data.embedded import EmbeddedConfig
from toolkit.data.generators import GeneratorTrainConfig
from toolkit.models.causal_clip import CausalCLIP, CausalCLIPConfig, hsic

SMALL = EmbeddedConfig(
    counts={"train": 24, "val": 8, "test": 8},
    generator=GeneratorTrainConfig(steps=10, diffusion_steps=5, diffusion_sample_steps=2),
)


def test_hsic_ablation_kernels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    indep, dep = torch.randn(64, 8, generator=g), x @ torch.randn(8, 8, generator=g)
    for kernel in ("rbf", "linear"):
        assert hsic(x, dep, kernel=kernel) > 2 * hsic(x, indep, kernel=kernel)
    # linear kernel: HSIC = ||cov(x, y)||_F^2 (biased, (n-1)^2 normalisation)
    xc, yc = x - x.mean(0), dep - dep.mean(0)
    assert hsic(x, dep, kernel="linear") == pytest.approx(float(((xc.T @ yc) ** 2).sum() / 63**2), rel=1e-4)
    with pytest.raises(ValueError, match="hsic_kernel"):
        CausalCLIPConfig(hsic_kernel="cosine")
    # the projection is fixed (same for every run and seed) and leaves the deployed head alone
    a, b = (
        CausalCLIP(CausalCLIPConfig(feature_dim=32, hsic_project=8)),
        CausalCLIP(CausalCLIPConfig(feature_dim=32, hsic_project=8)),
    )
    assert torch.equal(a.hsic_proj, b.hsic_proj) and "hsic_proj" not in a.state_dict()
    loss, parts = a.loss(torch.randn(16, 32), torch.randint(0, 2, (16,)), tau=0.5)
    assert torch.isfinite(loss) and "hsic" in parts


@pytest.mark.slow
def test_seeds_move_heads_not_data_and_statistics_pair_them(tmp_path):
    from benchmarks.embedded_generalisation import markdown
    from benchmarks.environment import environment
    from toolkit.pipelines.generalisation import VARIANTS, run_seeds, seed_statistics

    variants = {k: VARIANTS[k] for k in ("causal", "probe (no mask)", "HSIC, linear kernel", "keep 0.25")}
    res = run_seeds(tmp_path, "tiny-vit-32", seeds=2, variants=variants, epochs=5, progress=False,
                    bench_cfg=SMALL, log=lambda *_: None)  # fmt: skip
    assert set(res["results"]) == set(variants) and all(len(v) == 2 for v in res["results"].values())
    probe = res["results"]["probe (no mask)"]
    runs = tmp_path / "runs"
    w0, w1 = ((runs / f"probe-no-mask-s{s}" / "model.safetensors").read_bytes() for s in (0, 1))
    assert w0 != w1  # the seed moved the head ...
    c0, c1 = ((runs / f"probe-no-mask-s{s}" / "config.json").read_text() for s in (0, 1))
    assert c0.split('"train"')[0] == c1.split('"train"')[0]  # ... not the backbone, its weights or the data
    stats = seed_statistics(res)
    assert "vs_reference" not in stats["probe (no mask)"]
    acc = [r["mean_unseen"]["acc"] for r in res["results"]["causal"]]
    assert stats["causal"]["mean_unseen"]["acc"]["mean"] == pytest.approx(np.mean(acc))
    assert stats["causal"]["mean_unseen"]["acc"]["std"] == pytest.approx(np.std(acc, ddof=1))
    d = stats["causal"]["vs_reference"]["acc"]["delta"]
    assert d == pytest.approx(np.mean(acc) - np.mean([r["mean_unseen"]["acc"] for r in probe]))
    sweep = {"candidates": [], "target_auc": 0.75, "chosen": None}
    md = markdown(sweep, res, stats, "python -m benchmarks.embedded_generalisation", environment())
    assert "| causal |" in md and "paired" in md and "Target" in md
