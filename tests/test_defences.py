"""The head x defence table: every head alone and behind the student, clean / PGD / JPEG, one markdown."""


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
