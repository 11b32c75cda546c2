"""Supervised diffusion purifier on the embedded benchmark: attack -> train -> distil -> evaluate, one table.

Run (after `toolkit demo`, which leaves the detector run and the benchmark in demo_out/):
  .venv/bin/python -m benchmarks.purifier_eval [--workdir demo_out] [--n-pairs 256] [--n-eval 128]
      [--seeds 0 1 2] [--with-val] [--noised-calls 1]
The detector is the demo's CausalCLIP run; pairs come from its training family's train split (eps 4
and 8), evaluation uses held-out test images of the same family at eps 2, 4, 8, 16 (2 and 16 unseen).
Writes benchmarks/results/purifier_eval.{md,json} with the machine, versions and command.
"""

from __future__ import annotations

import argparse
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
) -> dict:
    """One training seed: the table of `toolkit.pipelines.defences.evaluate_purifiers` (run dir purifier/run).
    Several: a run per seed (purifier/run_seed<s>, the seed moves the UNets' initialisation and the training
    draws, never the detector or the pairs), each evaluated on the same held-out images and attacks, and one
    table of means over the seeds with t intervals. `with_val`: the held-out images are the training family's
    test and val splits pooled (val only set the detector's threshold; none of it trains a purifier)."""
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
    log(f"attacking {n_pairs} images of {proto['train']} at eps 4 and 8 ...")
    s = make_pairs(detector, bench / proto["train"], pairs, (4, 8), steps, "decision", n_pairs, progress=progress)
    size = read_json(detector / "config.json")["preprocess"]["size"]
    held_out = [bench / "test" / family] + ([bench / proto["threshold"]] if with_val else [])
    results, trained = [], []
    for seed in seeds:
        cfg = replace(PurifierConfig.tiny(size), steps=ddim_steps, noised_calls=noised_calls, seed=seed)
        tc = PurifierTrainConfig(
            teacher_steps,
            student_steps,
            diffpure_steps,
            clean_fraction=clean_fraction,
            noised_steps=noised_steps,
            noised_draws=noised_draws,
            seed=seed,
        )
        run_dir = workdir / "purifier" / ("run" if len(seeds) == 1 else f"run_seed{seed}")
        log(f"seed {seed}: training teacher, distilling the students, training the DiffPure baseline ...")
        trained.append(train_purifiers(pairs, run_dir, cfg, tc, progress=progress))
        log(f"seed {seed}: evaluating on held-out images ...")
        results.append(
            evaluate_purifiers(
                run_dir,
                detector,
                held_out if with_val else held_out[0],
                (2, 4, 8, 16),
                (4, 8),
                steps,
                n_eval,
                adaptive_eps=adaptive_eps,
                adaptive_rows=adaptive_rows,
                eot=eot,
                progress=progress,
            )
        )
    r = results[0] if len(seeds) == 1 else over_seeds_table(results, list(seeds))
    return {
        **r,
        "attack_success_rate_train": s["attack_success_rate"],
        "train_timings": [t["timings"] for t in trained] if len(seeds) > 1 else trained[0]["timings"],
        "train": trained[0]["train"],
        "purifier_config": trained[0]["purifier"],
    }


def main(argv: list[str] | None = None) -> None:
    from toolkit.pipelines.defences import purifier_markdown

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("demo_out"))
    ap.add_argument("--n-pairs", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--student-steps", type=int, default=300)
    ap.add_argument("--diffpure-steps", type=int, default=400)
    ap.add_argument("--ddim-steps", type=int, default=25)
    ap.add_argument("--clean-fraction", type=float, default=0.25)
    ap.add_argument("--adaptive-eps", type=float, nargs="+", default=[4, 8], help="eps of the adaptive attacks")
    ap.add_argument("--adaptive-rows", nargs="+", default=None, help="defences attacked adaptively (default: all)")
    ap.add_argument("--eot", type=int, default=4, help="noise draws per PGD step against the stochastic purifiers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one run each)")
    ap.add_argument("--noised-calls", type=int, default=1, help="UNet calls of the deployed noised student")
    ap.add_argument("--noised-steps", type=int, default=400, help="noised student's optimiser steps")
    ap.add_argument("--noised-draws", type=int, default=2, help="noise draws per pair of its teacher targets")
    ap.add_argument("--with-val", action="store_true", help="held-out: the family's test and val splits pooled")
    ap.add_argument("--out", type=Path, default=RESULTS / "purifier_eval")
    args = ap.parse_args(argv)
    command = command_line("benchmarks.purifier_eval", argv)
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
        tuple(args.adaptive_eps),
        tuple(args.adaptive_rows) if args.adaptive_rows else None,
        args.eot,
        seeds=tuple(args.seeds),
        noised_calls=args.noised_calls,
        noised_steps=args.noised_steps,
        noised_draws=args.noised_draws,
        with_val=args.with_val,
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
            f"({r['purifier_config']['noised_calls']} calls, {r['train']['noised_draws']} teacher endpoints per "
            f"image), clean fraction {r['train']['clean_fraction']}.",
            "",
            purifier_markdown(r),
        ]
    )
    write_result(args.out, {"command": command, "environment": env, **r}, md)


if __name__ == "__main__":
    main()
