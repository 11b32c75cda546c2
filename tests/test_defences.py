"""The head x defence table: every head alone and behind the student, clean / PGD / JPEG, one markdown."""


def test_head_defence_table_rows_and_attack_direction(trained_run, purifier_run, toy_data):
    from toolkit.pipelines.defences import head_defence_markdown, head_defence_table

    r = head_defence_table({"causal": trained_run}, purifier_run, toy_data / "gan_a", (8,), steps=3, n=16,
                           progress=False)  # fmt: skip
    assert list(r["rows"]) == ["causal + none", "causal + student (1 step)"]
    alone = r["rows"]["causal + none"]
    assert alone["pgd_acc"]["8"] < alone["clean_acc"]  # PGD on the head's own decision flips it
    for row in r["rows"].values():
        assert 0.0 <= row["jpeg_acc"] <= 1.0 and row["ms_per_image"] > 0
    md = head_defence_markdown(r)
    assert "| causal | student (1 step) |" in md and "PGD 8/255" in md
