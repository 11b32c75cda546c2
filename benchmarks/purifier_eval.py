"""Supervised diffusion purifier on the embedded benchmark: attack -> train -> distil -> evaluate, one table.

Run (after `toolkit demo`, which leaves the detector run and the benchmark in demo_out/):
  .venv/bin/python -m benchmarks.purifier_eval [--workdir demo_out] [--n-pairs 256] [--n-eval 128]
      [--seeds 0 1 2] [--with-val] [--noised-calls 1]
The detector is the demo's CausalCLIP run; pairs come from its training family's train split (eps 4
and 8), evaluation uses held-out test images of the same family at eps 2, 4, 8, 16 (2 and 16 unseen).
Writes benchmarks/results/purifier_eval.{md,json} with the machine, versions and command.

The frontier (after a run): noised students with 2 and 4 UNet calls from that run's teacher, beside it:
  .venv/bin/python -m benchmarks.purifier_eval --frontier-calls 1 2 4 [--n-eval 256] [--with-val]
      [--frontier-progressive 4 2 1] [--frontier-feature-weight 0.5] [--skip-rows teacher TV]
Writes benchmarks/results/purifier_frontier.{md,json}.

Speed, fairly (the tables time each row once, minutes apart): the deployed students of the runs a frontier wrote and
the first run's teacher, purifying one batch in turn, in interleaved rounds:
  .venv/bin/python -m benchmarks.purifier_eval --speed-runs demo_out/purifier/run demo_out/purifier/run_calls8 ...
Writes benchmarks/results/purifier_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result
from toolkit.io import read_json

RESULTS = Path(__file__).parent / "results"


def run(
    workdir: Path,
    n_pairs: int,
    n_eval: int,
    steps: int,
    teacher_steps: int,
    student_steps: int,
    diffpure_steps: int,
    ddim_steps: int,
    clean_fraction: float = 0.25,
    adaptive_eps: tuple[float, ...] = (4, 8),
    adaptive_rows: tuple[str, ...] | None = None,
    eot: int = 4,
    progress: bool = True,
    log=print,
    seeds: tuple[int, ...] = (0,),
    noised_calls: int = 1,
    noised_steps: int = 400,
    noised_draws: int = 2,
    with_val: bool = False,
    eps: tuple[float, ...] = (2, 4, 8, 16),
    skip_rows: tuple[str, ...] = (),
    noised_clean_target: str = "teacher",
    runs: tuple[Path, ...] = (),
) -> dict:
    """One training seed: the table of `toolkit.pipelines.defences.evaluate_purifiers` (run dir purifier/run).
    Several: a run per seed (purifier/run_seed<s>, the seed moves the UNets' initialisation and the training
    draws, never the detector or the pairs), each evaluated on the same held-out images and attacks, and one
    table of means over the seeds with t intervals. `with_val`: the held-out images are the training family's
    test and val splits pooled (val only set the detector's threshold; none of it trains a purifier). `runs`: run
    directories trained before (one per seed, on one set of pairs, with one training config but the seed; the
    training arguments are then theirs), evaluated as they are instead of attacking and training."""
    from dataclasses import replace

    from toolkit.models.purifier import PurifierConfig, PurifierTrainConfig
    from toolkit.pipelines.attack import make_pairs
    from toolkit.pipelines.defences import evaluate_purifiers, over_seeds_table
    from toolkit.pipelines.purifier_training import train_purifiers

    bench = workdir / "data" / "embedded"
    proto = read_json(bench / "benchmark.json")["protocol"]
    detector = workdir / "runs" / "causal"
    family = Path(proto["train"]).name
    pairs = workdir / "purifier" / "pairs"
    trained = []
    if runs:
        trained = _trained_runs(runs)
        seeds = tuple(t["purifier"]["seed"] for t in trained)
        s = read_json(Path(trained[0]["pairs"]) / "summary.json")
    else:
        log(f"attacking {n_pairs} images of {proto['train']} at eps 4 and 8 ...")
        s = make_pairs(detector, bench / proto["train"], pairs, (4, 8), steps, "decision", n_pairs, progress=progress)
    size = read_json(detector / "config.json")["preprocess"]["size"]
    held_out = [bench / "test" / family] + ([bench / proto["threshold"]] if with_val else [])
    results = []

    def evaluate(run_dir: Path) -> dict:
        return evaluate_purifiers(run_dir, detector, held_out if with_val else held_out[0], eps, (4, 8), steps,
                                  n_eval, adaptive_eps=adaptive_eps, adaptive_rows=adaptive_rows, eot=eot,
                                  progress=progress, skip_rows=skip_rows)  # fmt: skip

    for i, seed in enumerate(seeds):
        if runs:
            run_dir = runs[i]
            log(f"seed {seed}: evaluating {run_dir} (trained before) on held-out images ...")
            results.append(evaluate(run_dir))
            log(f"seed {seed}: " + _summary(results[-1]))
            continue
        cfg = replace(PurifierConfig.tiny(size), steps=ddim_steps, noised_calls=noised_calls, seed=seed)
        tc = PurifierTrainConfig(
            teacher_steps,
            student_steps,
            diffpure_steps,
            clean_fraction=clean_fraction,
            noised_steps=noised_steps,
            noised_draws=noised_draws,
            noised_clean_target=noised_clean_target,
            seed=seed,
        )
        run_dir = workdir / "purifier" / ("run" if len(seeds) == 1 else f"run_seed{seed}")
        log(f"seed {seed}: training teacher, distilling the students, training the DiffPure baseline ...")
        trained.append(train_purifiers(pairs, run_dir, cfg, tc, progress=progress))
        log(f"seed {seed}: evaluating on held-out images ...")
        results.append(evaluate(run_dir))
        log(f"seed {seed}: " + _summary(results[-1]))
    order = sorted(range(len(seeds)), key=seeds.__getitem__)  # the table's seed columns in ascending order
    r = results[0] if len(seeds) == 1 else over_seeds_table([results[i] for i in order], sorted(seeds))
    return {
        **r,
        "attack_success_rate_train": s["attack_success_rate"],
        "train_timings": [trained[i]["timings"] for i in order] if len(seeds) > 1 else trained[0]["timings"],
        "train": trained[order[0]]["train"],
        "purifier_config": trained[order[0]]["purifier"],
    }


def frontier(
    workdir: Path,
    run_dir: Path,
    calls: tuple[int, ...],
    n_eval: int,
    steps: int,
    eps: tuple[float, ...] = (2, 4, 8, 16),
    adaptive_eps: tuple[float, ...] = (8,),
    eot: int = 4,
    with_val: bool = False,
    progress: bool = True,
    log=print,
    noised_steps: int | None = None,
    noised_draws: int | None = None,
    progressive: tuple[int, ...] = (),
    feature_weight: float = 0.0,
    skip_rows: tuple[str, ...] = (),
    adaptive_rows: tuple[str, ...] = ("none", "student", "noised"),
    on_rows=None,
    reuse: tuple[Path, ...] = (),
) -> dict:
    """The frontier: noised students of each number of UNet calls in `calls`, distilled from one run's teacher
    on the same endpoints (the run's noised_steps and noised_draws unless given), each written as a run
    (purifier/run_calls<k>) and evaluated on the same held-out images and attacks as the run itself, whose every
    row but DiffPure's (and `skip_rows`') is the frontier's reference (teacher, its one call, the one-step
    student, the run's own noised student). Two other ways to distil, rows marked so: `progressive` (calls, e.g.
    4 2 1: a chain, each stage learning the previous one's endpoints; its stages after the first) and
    `feature_weight` (the run's number of calls, with a loss on the detector's features as well as pixels).
    `on_rows(table)`: called after each evaluation with the table so far (a long run keeps what it measured).
    `reuse`: students this function wrote before (purifier/run_calls<k>) from the same teacher (checked weight for
    weight), taken as the plain student of their calls instead of distilling it again, and not tabled again."""
    import shutil
    from dataclasses import replace

    import torch

    from toolkit.kinds.purifier import load_run, save_run
    from toolkit.models.purifier import (
        PurifierTrainConfig,
        progressive_noised_students,
        teacher_endpoints,
        train_noised_student,
    )
    from toolkit.pipelines.attack import pixel_detector, read_pairs
    from toolkit.pipelines.defences import evaluate_purifiers
    from toolkit.progress import progress_bar

    bench = workdir / "data" / "embedded"
    proto = read_json(bench / "benchmark.json")["protocol"]
    family = Path(proto["train"]).name
    held_out = [bench / "test" / family] + ([bench / proto["threshold"]] if with_val else [])
    detector = workdir / "runs" / "causal"
    config = read_json(run_dir / "config.json")
    nets, cfg = load_run(run_dir)
    students = {}
    for other in reuse:  # before the minutes of endpoints: a wrong run is refused at once
        o_nets, o_cfg = load_run(other)
        theirs, ours = o_nets["teacher"].state_dict(), nets["teacher"].state_dict()
        same = theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
        if "noised" not in o_nets or not same:
            raise ValueError(f"{other}: not a noised student of {run_dir}'s teacher")
        students[o_cfg.noised_calls] = o_nets["noised"]
    tc = PurifierTrainConfig(**config["train"])
    tc = replace(tc, noised_steps=noised_steps or tc.noised_steps, noised_draws=noised_draws or tc.noised_draws)
    adv, clean, _ = read_pairs(config["pairs"])
    a, c = adv * 2 - 1, clean * 2 - 1
    inputs = torch.cat([a, c])
    with progress_bar("teacher endpoints", len(inputs) * tc.noised_draws, progress) as advance:
        noises, targets = teacher_endpoints(nets["teacher"], inputs, cfg, tc.noised_draws, tc.seed + 3, advance)
    endpoints = (inputs.repeat(tc.noised_draws, 1, 1, 1), noises, targets)

    def evaluate(d, skip):
        return evaluate_purifiers(d, detector, held_out if with_val else held_out[0], eps, (4, 8), steps, n_eval,
                                  adaptive_eps=adaptive_eps, adaptive_rows=adaptive_rows, eot=eot,
                                  progress=progress, skip_rows=skip)  # fmt: skip

    log(f"evaluating {run_dir} (the reference rows) ...")
    table = evaluate(run_dir, ("DiffPure", *skip_rows))
    others = ("none", "JPEG", "TV", "DiffPure", "teacher", "student")
    train_s = {}
    table.update(frontier_train_s=train_s, frontier_calls=list(calls), frontier_progressive=list(progressive),
                 frontier_feature_weight=feature_weight)  # fmt: skip
    partial = on_rows or (lambda t: None)
    partial(table)

    def add(student, k: int, variant: str, k_tc) -> None:
        """Write the k-call student as a run beside the others and add its rows, marked with `variant`."""
        k_cfg = replace(cfg, noised_calls=k)
        k_dir = workdir / "purifier" / (f"run_calls{k}_{variant.split()[0]}" if variant else f"run_calls{k}")
        shutil.rmtree(k_dir, ignore_errors=True)
        save_run(k_dir, {**nets, "noised": student}, {**config, "purifier": k_cfg.to_dict(), "train": k_tc.__dict__})
        log(f"evaluating the {k}-call noised student{' (' + variant + ')' if variant else ''} ...")
        rows = evaluate(k_dir, others)["rows"]
        table["rows"].update({f"{name} [{variant}]" if variant else name: row for name, row in rows.items()})
        partial(table)

    def distil(k: int, k_tc, features=None):
        with progress_bar(f"distil noised student ({_calls(k)})", k_tc.noised_steps, progress) as advance:
            return train_noised_student(nets["teacher"], a, c, replace(cfg, noised_calls=k), k_tc,
                                        lambda **kw: advance(1, **kw), endpoints, features)  # fmt: skip

    for k in (k for k in calls if k != cfg.noised_calls and k not in students):
        t = time.perf_counter()
        students[k] = distil(k, tc)
        train_s[str(k)] = time.perf_counter() - t
        add(students[k], k, "", tc)
    if progressive:
        bars = {}
        t = time.perf_counter()
        with contextlib.ExitStack() as stack:  # the first stage is the plain student of its calls: reused if trained
            for k in progressive[1:] if progressive[0] in students else progressive:
                bars[k] = stack.enter_context(progress_bar(f"progressive: {_calls(k)}", tc.noised_steps, progress))
            chain = progressive_noised_students(nets["teacher"], a, c, cfg, tc, tuple(progressive), endpoints,
                                                lambda k: lambda **kw: bars[k](1, **kw),
                                                first=students.get(progressive[0]))  # fmt: skip
        variant = "progressive " + ">".join(map(str, progressive))
        train_s[variant] = time.perf_counter() - t
        for k in progressive[1:]:
            add(chain[k], k, variant, tc)
    if feature_weight:
        detector_model, _ = pixel_detector(detector)
        detector_model.requires_grad_(False)
        f_tc = replace(tc, feature_weight=feature_weight)
        t = time.perf_counter()
        student = distil(cfg.noised_calls, f_tc, lambda x: detector_model(x)[1])
        variant = f"feature loss {feature_weight:g}"
        train_s[variant] = time.perf_counter() - t
        add(student, cfg.noised_calls, variant, f_tc)
    return table


def _variants(r: dict) -> str:
    """What the rows marked [progressive ...] and [feature loss ...] are, when the frontier has them."""
    out = ""
    if r.get("frontier_progressive"):
        chain = " -> ".join(map(_calls, r["frontier_progressive"]))
        out += (f" Rows marked [progressive]: progressive distillation ({chain}), each stage initialised from the "
                "previous student and learning its endpoints from the same noise (Salimans & Ho 2022); its first "
                "stage is the plain student of that many calls.")  # fmt: skip
    if r.get("frontier_feature_weight"):
        out += (f" Rows marked [feature loss]: the pixel losses plus {r['frontier_feature_weight']:g} x (1 - cosine "
                "between the detector's embeddings of the student's output and of the clean image); that detector "
                "is the victim the attacks target.")  # fmt: skip
    return out


def speed(runs: tuple[Path, ...], n: int = 64, rounds: int = 5, log=print) -> dict:
    """ms per image of each run's deployed student and of the first run's teacher, purifying the same `n` images
    (one batch, seeded uniform noise: a UNet's time does not depend on the pixels) in `rounds` interleaved rounds, so
    a slow phase of the machine hits every defence alike (the frontier tables time each row once, minutes apart).
    -> {"rows": {name: {"calls", "ms_per_image" (median), "ms_rounds"}}, ...}."""
    import statistics

    import torch

    from toolkit.kinds.purifier import deployed_name, load_run
    from toolkit.pipelines.defences import defences

    fns, calls = {}, {}
    for i, run_dir in enumerate(runs):
        nets, cfg = load_run(run_dir)
        rows = defences(nets, cfg)  # the very functions the tables time once
        if i == 0:
            name = f"teacher ({cfg.steps} DDIM steps) of {run_dir.name}"
            fns[name], calls[name] = rows[f"teacher ({cfg.steps} DDIM steps)"].fn, cfg.steps
        name = f"deployed student of {run_dir.name}"
        fns[name], calls[name] = rows[deployed_name(cfg)].fn, max(cfg.noised_calls, 1)
        size = cfg.sample_size
    x = torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for f in fns.values():
            f(x[:2])  # warm-up
        for r in range(rounds):
            for name, f in fns.items():
                t = time.perf_counter()
                f(x)
                times[name].append(1e3 * (time.perf_counter() - t) / n)
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{v[-1]:.1f}" for v in times.values()) + " ms per image")
    rows = {name: {"calls": calls[name], "ms_per_image": statistics.median(v), "ms_rounds": v}
            for name, v in times.items()}  # fmt: skip
    return {"rows": rows, "batch": n, "rounds": rounds, "torch_threads": torch.get_num_threads()}


def _speed_markdown(r: dict, command: str, env: dict) -> str:
    ref = next(iter(r["rows"].values()))["ms_per_image"]
    lines = [
        "# Purifier speed: the teacher and deployed students, interleaved rounds (CPU, PyTorch)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, torch {env['versions']['torch']}, diffusers {env['versions']['diffusers']}, "
        f"{r['torch_threads']} threads.  ",
        f"Each defence purifies the same batch of {r['batch']} images once per round, {r['rounds']} rounds, the "
        "defences in turn; the figure is the median round.",
        "",
        "| defence | UNet calls | ms / image (median) | rounds (min-max) | x faster than the teacher |",
        "|---|---|---|---|---|",
    ]
    for name, row in r["rows"].items():
        ms = row["ms_per_image"]
        lines.append(f"| {name} | {row['calls']} | {ms:.1f} | {min(row['ms_rounds']):.1f}-{max(row['ms_rounds']):.1f}"
                     f" | {ref / ms:.1f} |")  # fmt: skip
    return "\n".join(lines)


def _trained_runs(runs: tuple[Path, ...]) -> list[dict]:
    """The config.json of each run trained before, checked to be one experiment over seeds: the same pairs, the
    same purifier and training config but the seed, each seed once (a one-line error naming what differs)."""

    from dataclasses import asdict

    from toolkit.models.purifier import PurifierConfig, PurifierTrainConfig

    def without_seed(part: str, d: dict) -> dict:  # a field newer than the run: its default, as loading the run does
        full = PurifierConfig.from_dict(d).to_dict() if part == "purifier" else {**asdict(PurifierTrainConfig()), **d}
        return {k: v for k, v in full.items() if k != "seed"}

    configs = [read_json(Path(r) / "config.json") for r in runs]
    for r, c in zip(runs[1:], configs[1:], strict=True):
        for part in ("purifier", "train"):
            a, b = without_seed(part, configs[0][part]), without_seed(part, c[part])
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            if diff:
                raise ValueError(f"{r}: its {part} config differs from {runs[0]}'s in {', '.join(diff)}")
        if c["pairs"] != configs[0]["pairs"]:
            raise ValueError(f"{r}: trained on {c['pairs']}, {runs[0]} on {configs[0]['pairs']}")
    seeds = [c["purifier"]["seed"] for c in configs]
    if len(set(seeds)) != len(seeds) or any(c["train"]["seed"] != c["purifier"]["seed"] for c in configs):
        raise ValueError(f"--runs: one run per training seed, got seeds {seeds}")
    return configs


def _calls(k: int) -> str:
    return f"{k} call{'s' if k != 1 else ''}"


def _summary(result: dict) -> str:
    """One seed's table in a line (clean / each eps, %), so that a long run shows each seed as it finishes."""
    cells = [
        f"{name}: {100 * row['clean_acc']:.1f} / " + " / ".join(f"{100 * e['acc']:.1f}" for e in row["eps"].values())
        for name, row in result["rows"].items()
    ]
    return "clean / " + " / ".join(f"eps {e}" for e in result["eps"]) + ": " + "; ".join(cells)


def _clean_target(train: dict) -> str:
    """How the noised student was taught on clean inputs (runs before the option learnt the teacher's endpoint)."""
    target = train.get("noised_clean_target", "teacher")
    return "the clean image itself" if target == "clean" else "the teacher's endpoint"


def _whole(eps: list[float]) -> tuple[float, ...]:
    """8.0 -> 8, so that a table's columns read `8/255` as the default's do."""
    return tuple(int(e) if float(e).is_integer() else e for e in eps)


def _parser() -> argparse.ArgumentParser:
    """The options; the training defaults repeat PurifierTrainConfig's (torch-free here; a test keeps them equal)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("demo_out"))
    ap.add_argument("--n-pairs", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--teacher-steps", type=int, default=1200)
    ap.add_argument("--student-steps", type=int, default=300)
    ap.add_argument("--diffpure-steps", type=int, default=400)
    ap.add_argument("--ddim-steps", type=int, default=25)
    ap.add_argument("--clean-fraction", type=float, default=0.25)
    ap.add_argument("--adaptive-eps", type=float, nargs="+", default=[4, 8], help="eps of the adaptive attacks")
    ap.add_argument("--adaptive-rows", nargs="+", default=None,
                    help="defences attacked adaptively (default: all; frontier: none student noised)")  # fmt: skip
    ap.add_argument("--eot", type=int, default=4, help="noise draws per PGD step against the stochastic purifiers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run each)")
    ap.add_argument("--noised-calls", type=int, default=1, help="UNet calls of the deployed noised student")
    ap.add_argument("--noised-steps", type=int, default=400, help="noised student's optimiser steps")
    ap.add_argument("--noised-draws", type=int, default=2, help="noise draws per pair of its teacher targets")
    ap.add_argument("--noised-clean-target", choices=["clean", "teacher"], default="teacher",
                    help="what the noised student learns for a clean input: the image itself or the teacher's "
                    "endpoint")  # fmt: skip
    ap.add_argument("--with-val", action="store_true", help="held-out: the family's test and val splits pooled")
    ap.add_argument("--eps", type=float, nargs="+", default=[2, 4, 8, 16], help="eps of the non-adaptive attacks")
    ap.add_argument("--skip-rows", nargs="+", default=[], help="defences (name prefixes) left out of the table")
    ap.add_argument("--runs", type=Path, nargs="+", default=(),
                    help="evaluate these runs (one per seed, trained before) instead of training")  # fmt: skip
    ap.add_argument("--frontier-calls", type=int, nargs="+", default=None,
                    help="instead: the frontier of noised students with these UNet calls, from --frontier-run's "
                    "teacher (writes --out, default results/purifier_frontier)")  # fmt: skip
    ap.add_argument("--frontier-progressive", type=int, nargs="+", default=(),
                    help="with --frontier-calls: also a progressive chain of these calls, e.g. 4 2 1")  # fmt: skip
    ap.add_argument("--frontier-feature-weight", type=float, default=0.0,
                    help="with --frontier-calls: also a student with this detector-feature loss weight")  # fmt: skip
    ap.add_argument("--frontier-run", type=Path, default=None, help="default: WORKDIR/purifier/run_seed0 or run")
    ap.add_argument("--frontier-reuse", type=Path, nargs="+", default=(),
                    help="students an earlier frontier wrote (purifier/run_calls<k>): reused, not tabled")  # fmt: skip
    ap.add_argument("--speed-runs", type=Path, nargs="+", default=None,
                    help="instead: time these runs' deployed students and the first one's teacher in interleaved "
                    "rounds (writes --out, default results/purifier_speed)")  # fmt: skip
    ap.add_argument("--speed-n", type=int, default=64, help="with --speed-runs: images per batch")
    ap.add_argument("--speed-rounds", type=int, default=5, help="with --speed-runs: interleaved rounds")
    ap.add_argument("--out", type=Path, default=None, help="default: results/purifier_eval (or _frontier, _speed)")
    return ap


def main(argv: list[str] | None = None) -> None:
    from toolkit.pipelines.defences import purifier_markdown

    ap = _parser()
    args = ap.parse_args(argv)
    command = command_line("benchmarks.purifier_eval", argv)
    if args.frontier_calls:
        return _frontier_main(args, command)
    if args.speed_runs:
        env = environment()
        r = speed(tuple(args.speed_runs), args.speed_n, args.speed_rounds)
        return write_result(args.out or RESULTS / "purifier_speed", {"command": command, "environment": env, **r},
                            _speed_markdown(r, command, env))  # fmt: skip
    args.out = args.out or RESULTS / "purifier_eval"
    r = run(
        args.workdir,
        args.n_pairs,
        args.n_eval,
        args.pgd_steps,
        args.teacher_steps,
        args.student_steps,
        args.diffpure_steps,
        args.ddim_steps,
        args.clean_fraction,
        _whole(args.adaptive_eps),
        tuple(args.adaptive_rows) if args.adaptive_rows else None,
        args.eot,
        seeds=tuple(args.seeds),
        noised_calls=args.noised_calls,
        noised_steps=args.noised_steps,
        noised_draws=args.noised_draws,
        with_val=args.with_val,
        eps=_whole(args.eps),
        skip_rows=tuple(args.skip_rows),
        noised_clean_target=args.noised_clean_target,
        runs=tuple(args.runs),
    )
    env = environment()
    images = r["images"] if isinstance(r["images"], str) else " + ".join(r["images"])
    md = "\n".join(
        [
            "# Supervised diffusion purifier, embedded benchmark (CPU)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_line(env)}, torch {env['versions']['torch']}, diffusers {env['versions']['diffusers']}.  ",
            f"Detector: {r['detector_run']} (tiny CLIP preset, random weights). Held-out: {r['n']} images of "
            f"{images}; PGD on the detector's decision, {r['pgd_steps']} steps; purifiers trained on eps 4 and 8 "
            f"(attack success on the training pairs: {r['attack_success_rate_train']}); training: "
            f"{r['train']['teacher_steps']} teacher / {r['train']['student_steps']} student / "
            f"{r['train']['diffpure_steps']} DiffPure / {r['train']['noised_steps']} noised-student steps "
            f"({_calls(r['purifier_config']['noised_calls'])}, {r['train']['noised_draws']} teacher endpoints per "
            f"image; a clean input's target: {_clean_target(r['train'])}), clean fraction "
            f"{r['train']['clean_fraction']}."
            + (f" Runs trained before and evaluated here: {', '.join(map(str, args.runs))}." if args.runs else ""),
            "",
            purifier_markdown(r),
        ]
    )
    write_result(args.out, {"command": command, "environment": env, **r}, md)


def _frontier_main(args, command: str) -> None:
    run_dir = args.frontier_run or next(
        d for d in (args.workdir / "purifier" / "run_seed0", args.workdir / "purifier" / "run") if d.exists()
    )
    out = args.out or RESULTS / "purifier_frontier"
    env = environment()

    def write(r: dict, partial: bool) -> None:
        write_result(out, {"command": command, "environment": env, "partial": partial, **r},
                     _frontier_markdown(args, command, env, run_dir, r, partial))  # fmt: skip

    r = frontier(args.workdir, run_dir, tuple(args.frontier_calls), args.n_eval, args.pgd_steps, _whole(args.eps),
                 _whole(args.adaptive_eps), args.eot, args.with_val, noised_steps=args.noised_steps,
                 noised_draws=args.noised_draws, progressive=tuple(args.frontier_progressive),
                 feature_weight=args.frontier_feature_weight, skip_rows=tuple(args.skip_rows),
                 adaptive_rows=tuple(args.adaptive_rows or ("none", "student", "noised")),
                 on_rows=lambda t: write(t, partial=True), reuse=tuple(args.frontier_reuse))  # fmt: skip
    write(r, partial=False)


def _frontier_markdown(args, command: str, env: dict, run_dir: Path, r: dict, partial: bool) -> str:
    from toolkit.pipelines.defences import purifier_markdown

    train = read_json(run_dir / "config.json")["train"]
    images = r["images"] if isinstance(r["images"], str) else " + ".join(r["images"])
    times = ", ".join(f"{_calls(int(k)) if k.isdigit() else k} {s:.0f} s" for k, s in r["frontier_train_s"].items())
    return "\n".join(
        [
            "# Purifier frontier: noised students by UNet calls, embedded benchmark (CPU)"
            + (" (partial: the run is still going or was stopped)" if partial else ""),
            "",
            f"Command: `{command}`  ",
            f"Machine: {cpu_line(env)}, torch {env['versions']['torch']}, diffusers {env['versions']['diffusers']}.  ",
            f"Teacher and reference rows: {run_dir} (training seed {train['seed']}). Every noised student is "
            f"distilled from that teacher on the same endpoints ({args.noised_steps} steps, "
            f"{args.noised_draws} endpoints per training image; training time: {times or 'none'}; the run's own "
            f"{train['noised_steps']} steps, {train['noised_draws']} endpoints). Held-out: "
            f"{r['n']} images of {images}; PGD on the detector's decision, {r['pgd_steps']} steps. One training "
            "seed: the intervals are Wilson's over images, not over seeds." + _variants(r),
            "",
            purifier_markdown(r),
        ]
    )


if __name__ == "__main__":
    main()
