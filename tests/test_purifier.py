"""Purifier: PGD respects eps and the pixel range and raises the loss; pairs are written losslessly with
metadata; a tiny student learns to reduce the perturbation; the exported purifier matches PyTorch."""

import json

import numpy as np
import pytest
import torch

from toolkit.attacks import PGDConfig, attack_loss, pgd
from toolkit.pipelines.attack import load_pixels, pixel_detector, read_pairs


@pytest.fixture(scope="module")
def detector(trained_run):
    model, config = pixel_detector(trained_run)
    return model.requires_grad_(False), config


@pytest.mark.parametrize("target", ["decision", "embedding"])
def test_pgd_respects_eps_range_and_raises_the_loss(detector, toy_data, target):
    model, config = detector
    paths = sorted((toy_data / "gan_b").rglob("*.png"))[:12]
    x = load_pixels(paths, config["preprocess"]["size"])
    y = torch.tensor([int("1_fake" in str(p)) for p in paths])
    for eps in (2, 8):
        adv = pgd(model, x, y, PGDConfig(eps=eps, steps=5, target=target, seed=0))
        assert (adv - x).abs().max() <= eps / 255 + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(torch.round(adv * 255), adv * 255)  # on the 8-bit grid: PNG is exact
        with torch.no_grad():
            before = attack_loss(model, x, x, y, target).mean()
            after = attack_loss(model, adv, x, y, target).mean()
        assert after > before


@pytest.mark.parametrize("target", ["decision", "embedding"])
def test_a_chunked_adaptive_attack_finds_what_the_whole_batch_does(detector, toy_data, target):
    """pgd(chunk=): images in chunks per forward/backward (the adaptive attack through a 4-call student on 512
    images at once took more than 24 GiB): each image's gradient is its own, so a deterministic defence gives
    the same adversarial images; a stochastic one stays in the ball and on the 8-bit grid."""
    from toolkit.attacks import Defence

    model, config = detector
    paths = sorted((toy_data / "gan_b").rglob("*.png"))[:10]
    x = load_pixels(paths, config["preprocess"]["size"])
    y = torch.tensor([int("1_fake" in str(p)) for p in paths])
    cfg = PGDConfig(eps=8, steps=4, target=target, seed=3)
    blur = Defence(lambda v, seed=0: torch.nn.functional.avg_pool2d(v, 3, 1, 1, count_include_pad=False), True)
    whole = pgd(model, x, y, cfg, defence=blur)
    for chunk in (1, 4, 10, 64):
        assert torch.equal(pgd(model, x, y, cfg, defence=blur, chunk=chunk), whole), chunk
    noisy = Defence(lambda v, seed=0: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed)),
                    True, eot=2)  # fmt: skip
    adv = pgd(model, x, y, cfg, defence=noisy, chunk=3)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and torch.equal(torch.round(adv * 255), adv * 255)
    assert torch.equal(adv, pgd(model, x, y, cfg, defence=noisy, chunk=3))  # seeded: the same draws per chunk


def test_pairs_are_lossless_with_metadata(pairs, detector):
    adv, clean, meta = read_pairs(pairs)
    assert len(meta) == len(adv) == 64 and {m["eps"] for m in meta} == {8, 16}
    assert all({"source", "label", "eps", "steps", "step_size", "target", "seed", "success"} <= set(m) for m in meta)
    for m, a, c in zip(meta, adv, clean, strict=True):
        assert (a - c).abs().max() <= m["eps"] / 255 + 1e-6
    s = json.loads((pairs / "summary.json").read_text())
    assert set(s["attack_success_rate"]) == {"8", "16"} and all(0 <= r <= 1 for r in s["attack_success_rate"].values())


def test_student_reduces_the_perturbation(purifier_run, pairs):
    from toolkit.kinds.purifier import load_run as load_purifiers
    from toolkit.models.purifier import OneStepPurifier

    nets, _ = load_purifiers(purifier_run)
    adv, clean, meta = read_pairs(pairs)
    strong = torch.tensor([m["eps"] == 16 for m in meta])
    with torch.no_grad():
        out = OneStepPurifier(nets["student"])(adv[strong])
    before = ((adv[strong] - clean[strong]) ** 2).mean()
    after = ((out - clean[strong]) ** 2).mean()
    assert after < before, (float(after), float(before))
    # trained with clean inputs too (clean_fraction): a clean image is changed less than the attack changed it
    with torch.no_grad():
        kept = OneStepPurifier(nets["student"])(clean[strong])
    assert ((kept - clean[strong]) ** 2).mean() < before


def test_exported_purifier_matches_pytorch(purifier_run, tmp_path):
    from export.core import export_run
    from toolkit.engines import open_engine

    m = export_run(purifier_run, tmp_path / "p", log=lambda *_: None).manifest
    assert m["kind"] == "purifier" and m["gates"]["fp32"]["passed"] and m["gates"]["fp16"]["passed"]
    # the deployed graph is the noised student, its fixed noise a constant of the graph drawn from noise_seed
    assert m["model_config"]["noised_calls"] == 1 and "noised student" in m["model_name"]
    assert m["gates"]["fp32"]["stats"]["max_abs_pixel"] <= 1e-4 and m["gates"]["fp16"]["stats"]["min_psnr_db"] >= 40
    x = np.random.default_rng(3).uniform(0, 1, (5, 3, 32, 32)).astype(np.float32)
    with open_engine(tmp_path / "p", "torch") as t, open_engine(tmp_path / "p", "onnxruntime", "fp32") as o:
        assert np.abs(t.infer({"images": x})["purified"] - o.infer({"images": x})["purified"]).max() <= 1e-4


def test_purify_then_detect_on_any_engine(purifier_run, exported_artifact, toy_data, tmp_path):
    from typer.testing import CliRunner

    from export.core import export_run
    from toolkit.cli import app
    from toolkit.pipelines.infer import InferConfig, run_inference
    from toolkit.pipelines.purify import run_purify

    art = tmp_path / "purifier"
    export_run(purifier_run, art, log=lambda *_: None)
    s = run_purify(toy_data / "gan_b", art, tmp_path / "out", workers=0, progress=False)
    assert s["purified_now"] == 24 and len(list((tmp_path / "out").rglob("*.png"))) == 24
    assert run_purify(toy_data / "gan_b", art, tmp_path / "out", workers=0, progress=False)["already_done"] == 24
    for engine, precision in (("torch", "fp32"), ("onnxruntime", "fp16")):
        r = run_inference(
            toy_data / "gan_b",
            exported_artifact,
            tmp_path / f"{engine}.csv",
            InferConfig(engine=engine, precision=precision, workers=0, purify=str(art)),
            progress=False,
        )
        assert r["rows_total"] == 24
    with pytest.raises(ValueError, match="needs a purifier artifact"):
        run_inference(
            toy_data / "gan_b",
            exported_artifact,
            tmp_path / "x.csv",
            InferConfig(workers=0, purify=str(exported_artifact)),
            progress=False,
        )
    res = CliRunner().invoke(
        app,
        ["purify", str(toy_data / "gan_b"), "--artifact", str(art), "--out", str(tmp_path / "cli"), "--workers", "0"],
    )
    assert res.exit_code == 0 and "24 purified" in res.output


def test_train_purifier_cli_deploys_the_noised_student_with_the_calls_asked_for(pairs, tmp_path):
    """`toolkit train purifier --noised-calls 2 --noised-steps N`: the run's deployed student takes 2 UNet calls
    (the README's frontier: 2 calls kept the teacher's robustness at 14x its speed) and was distilled for N steps;
    0 calls deploys the one-step student. Bug: the options parsed but not reaching the run's config."""
    from typer.testing import CliRunner

    from toolkit.cli import app
    from toolkit.kinds.purifier import deployed_name, load_run

    quick = ["--teacher-steps", "2", "--student-steps", "1", "--diffpure-steps", "1", "--noised-steps", "2"]
    for calls in (2, 0):
        out = tmp_path / f"run{calls}"
        res = CliRunner().invoke(app, ["train", "purifier", str(pairs), "--out", str(out), "--noised-calls",
                                       str(calls), *quick])  # fmt: skip
        assert res.exit_code == 0, res.output
        nets, cfg = load_run(out)
        assert cfg.noised_calls == calls and ("noised" in nets) == (calls > 0)
        assert json.loads((out / "config.json").read_text())["train"]["noised_steps"] == 2
    assert deployed_name(load_run(tmp_path / "run2")[1]) == "noised student (2 calls, fixed noise: deployed)"


def test_one_call_purify_is_the_x0_prediction_at_t_star_and_seeded():
    """The teacher's first step alone: with the untrained (identity) UNet it returns x_t* / sqrt(alpha_bar_t*)
    = x + sqrt((1 - a) / a) * noise, clamped; the same seed gives the same noise, another seed other noise
    (bug guarded: noising to another t, or noise not drawn from the seed)."""
    import torch

    from toolkit.models.purifier import PurifierConfig, alphas_cumprod, make_unet, one_call_purify

    cfg = PurifierConfig.tiny(16)
    unet = make_unet(cfg).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    a = alphas_cumprod()[cfg.t_star]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    want = (x + ((1 - a) / a).sqrt() * noise).clamp(-1, 1)
    with torch.no_grad():
        got = one_call_purify(unet, x, cfg, seed=5)
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.equal(got, one_call_purify(unet, x, cfg, seed=5))
        assert not torch.equal(got, one_call_purify(unet, x, cfg, seed=6))


@pytest.mark.parametrize("calls", [1, 2, 4])
def test_noised_student_steps_as_ddim_does(calls):
    """The k-call noised student is DDIM (eta 0, x0 clipped) on the timesteps t*, t*(k-1)/k, ..., t*/k: its
    output is the x0 that diffusers' DDIMScheduler, stepping the same schedule from the same noise, has the
    UNet predict at t*/k (bug guarded: another alpha, an eps from the clipped x0, a step skipped)."""
    from diffusers import DDIMScheduler

    from toolkit.models.purifier import (
        PurifierConfig,
        alphas_cumprod,
        make_unet,
        noised_student_purify,
        predict_x0,
        student_timesteps,
    )

    cfg = PurifierConfig.tiny(16)
    unet = make_unet(cfg)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.3)  # not the identity, so that every call matters
    unet.eval()
    ac = alphas_cumprod()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    ts = student_timesteps(cfg.t_star, calls)
    assert ts[0] == cfg.t_star and len(ts) == calls and ts[-1] == cfg.t_star // calls
    sched = DDIMScheduler(prediction_type="sample", clip_sample=True)
    sched.set_timesteps(1000 * calls // cfg.t_star)
    sample = sched.add_noise(x, noise, torch.tensor([ts[0]]))
    with torch.no_grad():
        for t in ts:
            x0 = predict_x0(unet, sample, torch.full((2,), t), ac)
            sample = sched.step(x0, t, sample).prev_sample
        want = x0.clamp(-1, 1)
        got = noised_student_purify(unet, x, noise, cfg.t_star, calls, ac)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_noised_student_noise_is_fixed_when_deployed_and_drawn_when_given():
    from toolkit.models.purifier import NoisedStudent, PurifierConfig, make_unet

    cfg = PurifierConfig.tiny(16)
    x = torch.rand(3, 3, 16, 16)
    a, b = NoisedStudent(make_unet(cfg), cfg, 2, noise_seed=7), NoisedStudent(make_unet(cfg), cfg, 2, noise_seed=8)
    with torch.no_grad():
        assert torch.equal(a(x), a(x)) and not torch.equal(a(x), b(x))  # the seed chooses the fixed noise
        given = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a(x, given), b(x, given)) and not torch.equal(a(x, given), a(x))
        out = a(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_teacher_endpoints_are_the_teachers_purification_from_that_noise():
    """Each target is the teacher's multi-step purification from exactly the noise stored with it (what makes
    it learnable in one call), and a seed reproduces them."""
    from toolkit.models.purifier import PurifierConfig, make_unet, multistep_purify, teacher_endpoints

    cfg = PurifierConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4, steps=2)
    unet = make_unet(cfg)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.3)
    unet.eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    noises, targets = teacher_endpoints(unet, x, cfg, draws=2, seed=4)
    assert noises.shape == targets.shape == (6, 3, 16, 16)
    assert not torch.equal(noises[:3], noises[3:])
    for d in range(2):
        sl = slice(3 * d, 3 * d + 3)
        assert torch.allclose(targets[sl], multistep_purify(unet, x, cfg, noise=noises[sl]), atol=1e-6)
    n2, t2 = teacher_endpoints(unet, x, cfg, draws=2, seed=4)
    assert torch.equal(n2, noises) and torch.equal(t2, targets)


@pytest.mark.parametrize("clean_target", ["clean", "teacher"])
def test_noised_students_clean_input_target_follows_the_option(monkeypatch, clean_target):
    """With "clean" a clean input's target is the clean image itself, with "teacher" (the default) the teacher's
    endpoint from it; an adversarial input's is the teacher's endpoint either way. Checked on the training loss
    itself: a student that returns its input exactly is perfect on every clean row (both draws) with "clean" and
    wrong on every adversarial row (bug guarded: the option moving the wrong rows, or none)."""
    import toolkit.models.purifier as pm

    cfg = pm.PurifierConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4, steps=2)
    tc = pm.PurifierTrainConfig(noised_draws=2, noised_clean_target=clean_target)
    adv, clean = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    inputs = torch.cat([adv, clean]).repeat(2, 1, 1, 1)
    endpoints = (inputs, torch.randn(inputs.shape), torch.zeros(inputs.shape))  # teacher endpoints: all zero
    captured = {}
    monkeypatch.setattr(pm, "_fit", lambda model, *args: captured.setdefault("loss_of", args[-2]))
    monkeypatch.setattr(pm, "noised_student_purify", lambda unet, x, *rest: x)  # the identity student
    pm.train_noised_student(pm.make_unet(cfg), adv, clean, cfg, tc, endpoints=endpoints)
    loss_of = captured["loss_of"]
    for row in (3, 4, 5, 9, 10, 11):  # clean inputs, first and second draw
        loss = float(loss_of(torch.tensor([row])))
        assert (loss == 0) if clean_target == "clean" else (loss > 0.1)
    for row in (0, 1, 2, 6, 7, 8):  # adversarial inputs: the teacher's endpoint stays the target
        assert float(loss_of(torch.tensor([row]))) > 0.1


def test_noised_student_rejects_an_unknown_clean_target():
    import toolkit.models.purifier as pm

    cfg = pm.PurifierConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4, steps=2)
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="noised_clean_target"):
        pm.train_noised_student(
            pm.make_unet(cfg), x, x, cfg, pm.PurifierTrainConfig(noised_clean_target="mean"),
            endpoints=(x.repeat(2, 1, 1, 1), x.repeat(2, 1, 1, 1), x.repeat(2, 1, 1, 1)),
        )  # fmt: skip


def test_noised_student_learns_the_teachers_endpoints(purifier_run, pairs):
    """Distillation did its job: from the same noise, the trained noised student is closer to the teacher's
    multi-step endpoint than the teacher's own first call (its initialisation) is (bug guarded: targets from
    other noise than the student's input, or the student not trained)."""
    from toolkit.kinds.purifier import load_run
    from toolkit.models.purifier import alphas_cumprod, noised_student_purify, teacher_endpoints

    nets, cfg = load_run(purifier_run)
    adv, _, _ = read_pairs(pairs)
    x = adv[:32] * 2 - 1
    noises, targets = teacher_endpoints(nets["teacher"], x, cfg, draws=1, seed=123)  # not the training draws
    ac = alphas_cumprod()
    with torch.no_grad():
        student = noised_student_purify(nets["noised"], x, noises, cfg.t_star, cfg.noised_calls, ac)
        first_call = noised_student_purify(nets["teacher"], x, noises, cfg.t_star, cfg.noised_calls, ac)
    assert ((student - targets) ** 2).mean() < 0.8 * ((first_call - targets) ** 2).mean()


def test_a_run_without_a_noised_student_still_deploys_its_one_step_student(purifier_run, tmp_path):
    """Runs written before the noised student (no noised_calls in config.json, no noised.safetensors) load
    and deploy the one-step student they were exported with."""
    import shutil

    from toolkit.io import read_json, write_json
    from toolkit.kinds.purifier import deployed, load_run
    from toolkit.models.purifier import OneStepPurifier

    old = tmp_path / "old"
    shutil.copytree(purifier_run, old)
    (old / "noised.safetensors").unlink()
    config = read_json(old / "config.json")
    del config["purifier"]["noised_calls"], config["purifier"]["noise_seed"]
    write_json(old / "config.json", config)
    nets, cfg = load_run(old)
    assert "noised" not in nets and cfg.noised_calls == 0
    assert isinstance(deployed(nets, cfg), OneStepPurifier)


def test_a_multi_call_noised_student_exports_as_one_graph_within_the_gates(purifier_run, tmp_path):
    """A 2-call noised student (two UNet calls, the DDIM step between them, the fixed noise) is one ONNX graph
    whose fp32 and fp16 gates pass, and onnxruntime gives PyTorch's pixels; the noise is the seeded constant,
    not a random op drawn at run time."""
    import shutil

    import onnx

    from export.core import export_run
    from toolkit.engines import open_engine
    from toolkit.io import read_json, write_json

    two = tmp_path / "two"
    shutil.copytree(purifier_run, two)
    config = read_json(two / "config.json")
    config["purifier"]["noised_calls"] = 2
    write_json(two / "config.json", config)
    m = export_run(two, tmp_path / "p2", log=lambda *_: None).manifest
    assert m["model_config"]["noised_calls"] == 2 and "2 calls" in m["model_name"]
    assert m["gates"]["fp32"]["passed"] and m["gates"]["fp16"]["passed"]
    graph = onnx.load(str(tmp_path / "p2" / "purifier.fp32.onnx")).graph
    assert not any(n.op_type.startswith("Random") for n in graph.node)
    x = np.random.default_rng(4).uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)
    with open_engine(tmp_path / "p2", "torch") as t, open_engine(tmp_path / "p2", "onnxruntime", "fp32") as o:
        ref = t.infer({"images": x})["purified"]
        assert np.abs(ref - o.infer({"images": x})["purified"]).max() <= 1e-4
        assert np.array_equal(ref, t.infer({"images": x})["purified"])  # seeded: the same pixels every call


def test_the_frontier_distils_k_call_students_from_one_teacher_and_tables_them_beside_it(
    purifier_run, trained_run, toy_data, tmp_path
):
    """benchmarks/purifier_eval --frontier-calls: a 2-call noised student distilled from the run's teacher is
    written as its own run (noised_calls 2) and evaluated on the same images as the run's reference rows; so are
    the progressive chain's later stages and the feature-loss student, in rows and runs marked as such."""
    from benchmarks.purifier_eval import frontier
    from toolkit.io import read_json, write_json
    from toolkit.kinds.purifier import load_run

    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "causal").symlink_to(trained_run)
    bench = work / "data" / "embedded"
    (bench / "test").mkdir(parents=True)
    (bench / "test" / "gan_a").symlink_to(toy_data / "gan_a")
    write_json(bench / "benchmark.json", {"protocol": {"train": "train/gan_a", "threshold": "val/gan_a"}})
    seen = []  # what a long run has written when it stops: the table after each evaluation
    keep = lambda t: seen.append((len(t["rows"]), dict(t["frontier_train_s"])))  # noqa: E731
    r = frontier(work, purifier_run, (1, 2), 8, 1, eps=(8,), adaptive_eps=(8,), eot=1, progress=False,
                 log=lambda *_: None, noised_steps=3, noised_draws=1, progressive=(2, 1), feature_weight=0.5,
                 skip_rows=("TV",), on_rows=keep)  # fmt: skip
    assert [n for n, _ in seen] == sorted({n for n, _ in seen}) and len(seen) == 4  # reference, 2, 2>1, feature
    assert seen[0][1] == {} and seen[-1][1].keys() == r["frontier_train_s"].keys()
    rows = r["rows"]
    assert "noised student (2 calls, fresh noise)" in rows and "noised student (2 calls, fixed noise: deployed)" in rows
    assert "noised student (1 call, fixed noise: deployed)" in rows and "teacher (5 DDIM steps)" in rows
    assert not any(name.startswith(("DiffPure", "TV")) for name in rows)
    assert list(r["frontier_train_s"]) == ["2", "progressive 2>1", "feature loss 0.5"]  # the chain's 2 calls reused
    assert set(rows["noised student (2 calls, fresh noise)"]["adaptive"]) == {"8"}
    for variant in ("progressive 2>1", "feature loss 0.5"):
        assert f"noised student (1 call, fixed noise: deployed) [{variant}]" in rows
    assert not any("2 calls" in name and "[" in name for name in rows)  # the chain's first stage: the plain row
    nets, cfg = load_run(work / "purifier" / "run_calls2")
    assert cfg.noised_calls == 2 and "noised" in nets
    for d in ("run_calls1_progressive", "run_calls1_feature"):
        nets, cfg = load_run(work / "purifier" / d)
        assert cfg.noised_calls == 1 and "noised" in nets
    assert read_json(work / "purifier" / "run_calls1_feature" / "config.json")["train"]["feature_weight"] == 0.5

    # --frontier-reuse: a later chain starts from the 2-call student written above, not distilled (nor tabled) again
    r2 = frontier(work, purifier_run, (1, 2), 8, 1, eps=(8,), adaptive_eps=(8,), eot=1, progress=False,
                  log=lambda *_: None, noised_steps=3, noised_draws=1, progressive=(2, 1),
                  skip_rows=("TV", "teacher", "student"), reuse=(work / "purifier" / "run_calls2",))  # fmt: skip
    assert list(r2["frontier_train_s"]) == ["progressive 2>1"]
    assert not any(name.startswith("noised student (2 calls") for name in r2["rows"])
    assert "noised student (1 call, fixed noise: deployed) [progressive 2>1]" in r2["rows"]
    nets, _ = load_run(work / "purifier" / "run_calls2")
    with torch.no_grad():
        next(nets["teacher"].parameters()).add_(1e-3)
    from toolkit.kinds.purifier import save_run

    save_run(tmp_path / "other", nets, read_json(work / "purifier" / "run_calls2" / "config.json"))
    with pytest.raises(ValueError, match=r"other: not a noised student of .*'s teacher"):
        frontier(work, purifier_run, (1,), 8, 1, progress=False, log=lambda *_: None, reuse=(tmp_path / "other",))


def test_purifier_speed_times_the_teacher_and_each_deployed_student_in_interleaved_rounds(purifier_run, tmp_path):
    """benchmarks/purifier_eval --speed-runs: the first run's teacher, then each run's deployed student, each timed
    once per round on the same batch; the median round is the figure and the table's speed-up is against the
    teacher. Bugs: a round missing a defence, the teacher of every run timed, the ratio inverted."""
    import shutil

    from benchmarks.environment import environment
    from benchmarks.purifier_eval import _speed_markdown, speed
    from toolkit.kinds.purifier import load_run

    other = tmp_path / "run_calls9"
    shutil.copytree(purifier_run, other)
    _, cfg = load_run(purifier_run)
    lines = []
    r = speed((purifier_run, other), n=2, rounds=3, log=lines.append)
    names = list(r["rows"])
    assert names == [f"teacher ({cfg.steps} DDIM steps) of {purifier_run.name}",
                     f"deployed student of {purifier_run.name}", "deployed student of run_calls9"]  # fmt: skip
    assert len(lines) == 3 and all(len(row["ms_rounds"]) == 3 for row in r["rows"].values())
    assert [row["calls"] for row in r["rows"].values()] == [cfg.steps] + [max(cfg.noised_calls, 1)] * 2
    for row in r["rows"].values():
        assert row["ms_per_image"] == sorted(row["ms_rounds"])[1] > 0
    md = _speed_markdown(r, "cmd", environment())
    teacher_ms = r["rows"][names[0]]["ms_per_image"]
    student_ms = r["rows"][names[1]]["ms_per_image"]
    assert "| 1.0 |" in md.splitlines()[8] and f"| {teacher_ms / student_ms:.1f} |" in md.splitlines()[9]


def test_purifier_eval_evaluates_runs_trained_before_and_refuses_runs_that_are_not_one_experiment(
    purifier_run, trained_run, toy_data, tmp_path
):
    """benchmarks/purifier_eval --runs: runs trained before are evaluated as they are (no attack, no training; the
    table's training line is theirs), and runs that differ in more than the seed, or repeat a seed, are refused
    in one line naming the difference."""
    import shutil

    from benchmarks.purifier_eval import _trained_runs, run
    from toolkit.io import read_json, write_json

    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "causal").symlink_to(trained_run)
    bench = work / "data" / "embedded"
    (bench / "test").mkdir(parents=True)
    (bench / "test" / "gan_a").symlink_to(toy_data / "gan_a")
    write_json(bench / "benchmark.json", {"protocol": {"train": "train/gan_a", "threshold": "val/gan_a"}})
    r = run(work, 0, 8, 1, 0, 0, 0, 0, eps=(8,), adaptive_eps=(8,), eot=1, progress=False, log=lambda *_: None,
            skip_rows=("JPEG", "TV", "DiffPure", "teacher"), runs=(purifier_run,))  # fmt: skip
    config = read_json(purifier_run / "config.json")
    assert r["train"] == config["train"] and r["n"] == 8 and not (work / "purifier").exists()  # nothing trained
    assert any(name.startswith("noised student") for name in r["rows"])
    other = tmp_path / "other"
    shutil.copytree(purifier_run, other)
    with pytest.raises(ValueError, match="one run per training seed"):
        _trained_runs((purifier_run, other))
    c = read_json(other / "config.json")
    write_json(other / "config.json", {**c, "train": {**c["train"], "teacher_steps": 7, "seed": 5},
                                       "purifier": {**c["purifier"], "seed": 5}})  # fmt: skip
    with pytest.raises(ValueError, match=r"other: its train config differs .* in teacher_steps$"):
        _trained_runs((purifier_run, other))
    write_json(other / "config.json",
               {**c, "train": {**c["train"], "seed": 5}, "purifier": {**c["purifier"], "seed": 5}})  # fmt: skip
    assert [t["purifier"]["seed"] for t in _trained_runs((purifier_run, other))] == [c["purifier"]["seed"], 5]


def test_the_feature_loss_compares_each_output_with_its_own_clean_image(monkeypatch):
    """With `feature_weight` the loss gains w * (1 - cos(victim(output), victim(that row's clean image))), the same
    for every draw; a stand-in victim (the flattened pixels) makes the term exact (bug guarded: the embeddings of
    another row's clean image, or of the adversarial input, as the reference)."""
    import toolkit.models.purifier as pm

    cfg = pm.PurifierConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4, steps=2)
    adv, clean = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    inputs = torch.cat([adv, clean]).repeat(2, 1, 1, 1)
    endpoints = (inputs, torch.randn(inputs.shape), torch.zeros(inputs.shape))
    monkeypatch.setattr(pm, "noised_student_purify", lambda unet, x, *rest: x)  # the identity student
    victim = lambda x: x.flatten(1)  # noqa: E731
    losses = {}
    for w in (0.0, 2.0):
        captured = {}
        monkeypatch.setattr(pm, "_fit", lambda model, *args, c=captured: c.setdefault("loss_of", args[-2]))
        tc = pm.PurifierTrainConfig(noised_draws=2, noised_clean_target="clean", feature_weight=w)
        pm.train_noised_student(pm.make_unet(cfg), adv, clean, cfg, tc, endpoints=endpoints, features=victim)
        losses[w] = [float(captured["loss_of"](torch.tensor([r]))) for r in range(12)]
    for r in range(12):
        i = r % 3  # the row's image
        x = adv[i] if r % 6 < 3 else clean[i]
        cos = torch.nn.functional.cosine_similarity(victim((x[None] + 1) / 2), victim((clean[i][None] + 1) / 2))
        assert losses[2.0][r] - losses[0.0][r] == pytest.approx(2.0 * float(1 - cos), abs=1e-5)
    assert losses[2.0][3] == pytest.approx(0, abs=1e-6)  # a clean input through the identity: nothing to pay
    with pytest.raises(ValueError, match="features"):
        tc = pm.PurifierTrainConfig(noised_draws=2, feature_weight=1.0)
        pm.train_noised_student(pm.make_unet(cfg), adv, clean, cfg, tc, endpoints=endpoints)


def test_progressive_distillation_chains_each_stage_on_the_previous_students_endpoints(monkeypatch):
    """4 -> 2 -> 1 calls: the first stage learns the teacher's endpoints from the teacher, each next stage the
    previous student's own endpoints (same inputs, same noise) from that student (bug guarded: every stage on the
    teacher's targets, which is one-shot distillation again, or a stage started from the teacher)."""
    import toolkit.models.purifier as pm

    cfg = pm.PurifierConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4, steps=2)
    tc = pm.PurifierTrainConfig(noised_draws=1)
    adv, clean = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    inputs = torch.cat([adv, clean])
    teacher_targets = torch.zeros(inputs.shape)
    endpoints = (inputs, torch.randn(inputs.shape), teacher_targets)
    seen = []

    def fake_train(init, a, c, k_cfg, tc, advance, endpoints, features):
        seen.append((init, k_cfg.noised_calls, endpoints))
        unet = pm.make_unet(k_cfg)
        torch.nn.init.normal_(unet.conv_out.weight, std=0.1)  # not the identity: its endpoints are its own
        return unet.eval().requires_grad_(False)

    monkeypatch.setattr(pm, "train_noised_student", fake_train)
    teacher = pm.make_unet(cfg)
    students = pm.progressive_noised_students(teacher, adv, clean, cfg, tc, (4, 2, 1), endpoints)
    assert list(students) == [4, 2, 1] and [k for _, k, _ in seen] == [4, 2, 1]
    assert seen[0][0] is teacher and seen[0][2][2] is teacher_targets
    for stage, prev in ((1, 4), (2, 2)):
        init, _, (ins, noises, targets) = seen[stage]
        assert init is students[prev] and ins is inputs and noises is endpoints[1]
        prev_cfg = pm.PurifierConfig(**{**cfg.__dict__, "noised_calls": prev})
        assert torch.equal(targets, pm.student_endpoints(students[prev], inputs, endpoints[1], prev_cfg))
        assert not torch.allclose(targets, teacher_targets)
    with pytest.raises(ValueError, match="decrease"):
        pm.progressive_noised_students(teacher, adv, clean, cfg, tc, (1, 2), endpoints)


def test_training_defaults_are_the_configs_in_the_cli_and_the_benchmark():
    """`toolkit train purifier` and benchmarks/purifier_eval repeat PurifierTrainConfig's defaults as literals (their
    modules stay torch-free): a default changed in one place only (teacher_steps 400 -> 1200 was) fails here."""
    import dataclasses
    import inspect

    from benchmarks.purifier_eval import _parser
    from toolkit.cli.train import purifier
    from toolkit.models.purifier import PurifierTrainConfig

    config = {f.name: f.default for f in dataclasses.fields(PurifierTrainConfig)}
    cli = {n: p.default.default for n, p in inspect.signature(purifier).parameters.items() if n in config}
    bench = {n: v for n, v in vars(_parser().parse_args([])).items() if n in config}
    assert {"teacher_steps", "student_steps", "diffpure_steps", "clean_fraction"} <= cli.keys()
    assert {"teacher_steps", "noised_steps", "noised_draws", "noised_clean_target"} <= bench.keys()
    assert cli == {n: config[n] for n in cli} and bench == {n: config[n] for n in bench}
