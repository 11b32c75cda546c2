"""Intervals and paired tests of the evaluation tables (issue 28), checked against cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.statistics import mcnemar, over_seeds, wilson


def test_wilson_matches_the_worked_case():
    """8 of 10 right: Wilson's 95% interval is [0.4902, 0.9433] (z = 1.95996; the normal approximation would
    give [0.552, 1.048], outside [0, 1])."""
    ci = wilson([True] * 8 + [False] * 2)
    assert ci.mean == pytest.approx(0.8)
    assert ci.low == pytest.approx(0.4902, abs=1e-4) and ci.high == pytest.approx(0.9433, abs=1e-4)
    assert ci.percent() == "80.0 [49.0, 94.3]"


def test_wilson_keeps_a_width_at_zero_and_all():
    """0 of 48 is not certainty: the interval reaches 7.4 points (z^2 / (n + z^2) = 0.0741)."""
    none, every = wilson([False] * 48), wilson([True] * 48)
    assert none.low == pytest.approx(0.0, abs=1e-12) and none.high == pytest.approx(0.0741, abs=1e-4)
    assert every.high == pytest.approx(1.0) and every.low == pytest.approx(1 - 0.0741, abs=1e-4)
    with pytest.raises(ValueError, match="at least one image"):
        wilson([])


def test_wilson_narrows_with_more_images():
    """The issue's point: 48 images leave about +-13 points at 60%, 512 about +-4."""
    small = wilson(np.arange(48) < 29)
    large = wilson(np.arange(512) < 309)
    assert 12 < 50 * (small.high - small.low) < 15 and 4 < 50 * (large.high - large.low) < 4.5


def test_over_seeds_is_students_t():
    """Seeds 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027, half-width 4.3027 / sqrt(3) = 2.4841."""
    ci = over_seeds([1.0, 2.0, 3.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.low == pytest.approx(2 - 2.4841, abs=1e-4) and ci.high == pytest.approx(2 + 2.4841, abs=1e-4)
    one = over_seeds([0.5])
    assert one.low == one.high == one.mean == 0.5
    with pytest.raises(ValueError):
        over_seeds([])


def test_mcnemar_counts_only_discordant_images():
    """A right alone on 1 image, B alone on 9, 90 images agreeing: exact two-sided p = 2 * (1 + 10) / 2^10 =
    0.021484; the 90 concordant images do not change it."""
    a = np.array([True] * 1 + [False] * 9 + [True] * 45 + [False] * 45)
    b = np.array([False] * 1 + [True] * 9 + [True] * 45 + [False] * 45)
    t = mcnemar(a, b)
    assert (t.only_a, t.only_b) == (1, 9)
    assert t.p_value == pytest.approx(22 / 1024)
    assert mcnemar(a[10:], b[10:]).p_value == 1.0
    assert mcnemar(b, a).p_value == pytest.approx(t.p_value) and mcnemar(b, a).only_a == 9
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar(a, b[:5])


def test_paired_tests_and_the_table_show_intervals():
    """The purifier table prints each accuracy with its interval and a McNemar row per defence and column."""
    from toolkit.pipelines.defences import paired_tests, purifier_markdown

    rng = np.random.default_rng(0)
    correct = {
        name: {"clean": rng.random(64) < 0.6, "8": rng.random(64) < p}
        for name, p in (("none", 0.05), ("student (1 step)", 0.5))
    }
    tests = paired_tests(correct, "student (1 step)")
    assert [(t["b"], t["column"]) for t in tests] == [("none", "clean"), ("none", "8")]
    assert tests[1]["p_value"] < 0.001  # 5% against 50% on 64 paired images
    rows = {
        name: {
            "clean_acc": float(c["clean"].mean()),
            "clean_ci": wilson(c["clean"]).to_dict(),
            "ms_per_image": 1.0,
            "eps": {"8": {"acc": float(c["8"].mean()), "ci": wilson(c["8"]).to_dict(), "psnr": 30.0, "ssim": 0.9}},
        }
        for name, c in correct.items()
    }
    r = {"n": 64, "eps": ["8"], "train_eps": ["8"], "pgd_steps": 10, "rows": rows, "paired": tests}
    r["adaptive"] = {"eps": 8, "student_acc": 0.1}
    md = purifier_markdown(r)
    assert wilson(correct["none"]["8"]).percent() in md
    assert "| none | eps 8 |" in md and "McNemar" in md
    # a table whose deployed row was skipped (--skip-rows) has no paired tests and still renders; this raised
    # KeyError after a 16-minute evaluation before
    without = {k: v for k, v in correct.items() if k != "student (1 step)"}
    assert paired_tests(without, "student (1 step)") == []
    md = purifier_markdown({**r, "rows": {"none": rows["none"]}, "paired": []})
    assert "| none |" in md and "McNemar" not in md


def test_training_seed_does_not_move_the_encoder(monkeypatch, tmp_path):
    """`train detector --seed 3` trains with seed 3 on the encoder of --backbone-seed (default 0): before,
    --seed also re-seeded the random encoder, so a loop over seeds compared different encoders."""
    from typer.testing import CliRunner

    import toolkit.pipelines.detector as pipeline
    from toolkit.cli import app

    seen = []

    def fake_train(data, out_dir, backbone_cfg, train_cfg, **kw):
        seen.append((backbone_cfg.seed, train_cfg.seed))
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "train_detector", fake_train)
    for extra in ([], ["--seed", "3"], ["--seed", "3", "--backbone-seed", "7"]):
        CliRunner().invoke(app, ["train", "detector", str(tmp_path), "--out", str(tmp_path / "r"), *extra])
    assert seen == [(0, 0), (0, 3), (7, 3)]
