"""The head x defence table: every head alone and behind the student, clean / PGD / JPEG, one markdown; the
purifier table's columns and the table over training seeds."""

import pytest


def test_head_defence_table_rows_and_attack_direction(trained_run, purifier_run, toy_data):
    from toolkit.pipelines.defences import head_defence_markdown, head_defence_table

    r = head_defence_table({"causal": trained_run}, purifier_run, toy_data / "gan_a", (8,), steps=3, n=16,
                           progress=False)  # fmt: skip
    deployed = "noised student (1 call, fixed noise: deployed)"
    assert list(r["rows"]) == ["causal + none", f"causal + {deployed}"]
    alone = r["rows"]["causal + none"]
    assert alone["pgd_acc"]["8"] < alone["clean_acc"]  # PGD on the head's own decision flips it
    for row in r["rows"].values():
        assert 0.0 <= row["jpeg_acc"] <= 1.0 and row["ms_per_image"] > 0
    md = head_defence_markdown(r)
    assert f"| causal | {deployed} |" in md and "PGD 8/255" in md


def test_purifier_table_has_adaptive_columns_intervals_and_paired_tests(trained_run, purifier_run, toy_data):
    """Issue 28: every purifier table shows the adaptive figure beside the non-adaptive one, each accuracy
    with its interval, and McNemar's test of the student against each defence (clean, each eps, adaptive)."""
    from toolkit.pipelines.defences import evaluate_purifiers, purifier_markdown

    attacked = ("none", "student", "noised")
    r = evaluate_purifiers(purifier_run, trained_run, toy_data / "gan_a", (8,), (8,), steps=2, n=12,
                           adaptive_eps=(8,), adaptive_rows=attacked, eot=1, progress=False)  # fmt: skip
    rows = r["rows"]
    assert set(rows["student (1 step)"]["adaptive"]) == {"8"} and rows["teacher (5 DDIM steps)"]["adaptive"] == {}
    # through the identity, the adaptive attack is the non-adaptive one, image for image
    assert rows["none"]["adaptive"]["8"]["acc"] == rows["none"]["eps"]["8"]["acc"]
    for row in rows.values():
        ci = row["eps"]["8"]["ci"]
        assert ci["low"] <= row["eps"]["8"]["acc"] <= ci["high"]
    columns = {(t["b"], t["column"]) for t in r["paired"]}
    assert ("none", "adaptive 8") in columns and ("teacher (5 DDIM steps)", "8") in columns
    assert r["deployed"] == "noised student (1 call, fixed noise: deployed)"
    assert set(rows[r["deployed"]]["adaptive"]) == {"8"}
    assert all(t["a"] == r["deployed"] != t["b"] for t in r["paired"])
    assert ("student (1 step)", "8") in columns  # the one-step student: a baseline the deployed one is tested against
    md = purifier_markdown(r)
    assert "adaptive @ 8/255" in md and "not run" in md and "McNemar" in md


def test_over_seeds_table_means_t_intervals_and_keeps_every_seed():
    """Issue 28: a table over training seeds is the mean of each cell with Student's t interval over the seeds
    (a known case: 0.5 / 0.7 / 0.6 -> mean 0.6, half-width t(0.975, 2) x 0.1 / sqrt 3 = 0.2484), keeps each
    seed's value and paired tests, and its markdown says it is over seeds."""
    from toolkit.pipelines.defences import over_seeds_table, purifier_markdown

    def result(seed, acc, ms):
        cell = {"acc": acc, "ci": {"low": 0, "high": 1, "level": 0.95}, "psnr": 30.0 + seed, "ssim": 0.9}
        row = {"clean_acc": acc, "clean_ci": cell["ci"], "ms_per_image": ms, "eps": {"8": cell},
               "adaptive": {"8": {"acc": acc / 2, "ci": cell["ci"]}}}  # fmt: skip
        paired = [{"a": "d", "b": "none", "column": "8", "only_a": seed, "only_b": 0, "p_value": 1.0}]
        return {"images": "x", "n": 10, "eps": ["8"], "train_eps": ["8"], "adaptive_eps": ["8"], "eot": 1,
                "pgd_steps": 2, "deployed": "d", "detector_run": "r", "purifier_run": f"run{seed}",
                "rows": {"d": row, "none": row}, "paired": paired}  # fmt: skip

    r = over_seeds_table([result(0, 0.5, 1.0), result(1, 0.7, 2.0), result(2, 0.6, 3.0)], [0, 1, 2])
    cell = r["rows"]["d"]["eps"]["8"]
    assert cell["acc"] == pytest.approx(0.6) and cell["per_seed"] == [0.5, 0.7, 0.6]
    assert cell["ci"]["high"] - 0.6 == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)
    assert cell["psnr"] == pytest.approx(31.0) and r["rows"]["d"]["adaptive"]["8"]["acc"] == pytest.approx(0.3)
    assert r["rows"]["d"]["ms_per_image"] == pytest.approx(2.0) and r["rows"]["d"]["ms_per_seed"] == [1.0, 2.0, 3.0]
    assert [p[0]["only_a"] for p in r["paired_per_seed"]] == [0, 1, 2] and r["seeds"] == [0, 1, 2]
    md = purifier_markdown(r)
    assert "means over 3 training seeds (0, 1, 2)" in md and "| d | 60.0 [35.2, 84.8]" in md
