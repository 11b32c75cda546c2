"""CausalCLIP, its ablations, the linear probe and the prompt head on the embedded benchmark, over seeds.

Run:  .venv/bin/python -m benchmarks.embedded_generalisation --seeds 5 \\
          [--victims tiny-vit-64 ViT-B-32 ViT-B-16] [--workdir bench_out] [--epochs 80]
First picks the victim: the cheapest candidate backbone (in the order given) whose linear probe reaches
in-family test AUC >= 0.75 (seed 0); then trains every variant with seeds 0..N-1 on that backbone (features
cached once; a seed moves mask init, Gumbel noise and data order, never the images or the encoder),
reports mean +- std per variant and per generator, and a paired t-test of each variant against the probe.
Nothing is selected on the test split: validation is the training family's own held-out folder.
Writes benchmarks/results/embedded_generalisation.{md,json} with the machine, versions and command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result
from toolkit.pipelines.generalisation import VARIANTS, run_seeds, seed_statistics, victim_sweep

RESULTS = Path(__file__).parent / "results"
REFERENCE = "probe (no mask)"


def _f(ms: dict, scale: float = 100.0) -> str:
    if ms["mean"] is None:
        return "-"
    return (
        f"{scale * ms['mean']:.1f} ± {scale * ms['std']:.1f}" if ms["std"] is not None else f"{scale * ms['mean']:.1f}"
    )


def markdown(sweep: dict, res: dict, stats: dict, command: str, env: dict) -> str:
    proto = res["protocol"]
    lines = [
        f"# Embedded benchmark over {res['seeds']} seeds: CausalCLIP, ablations, linear probe, prompt head",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, torch {env['versions']['torch']}, open_clip {env['versions']['open_clip_torch']}  ",
        f"Protocol: train on `{proto['train']}`, threshold fixed on `{proto['threshold']}` (validation: the training "
        f"family only), test on `{proto['test']}` (unseen: {', '.join(proto['unseen'])}). Head training "
        f"{res['epochs']} epochs; features encoded once and cached (by the victim sweep when it ran the chosen "
        f"backbone; {res['encode_s']:.0f} s in this step).",
        "",
        "## The victim",
        "",
        f"The cheapest backbone (candidates in order of cost) whose linear probe reaches in-family test AUC >= "
        f"{100 * sweep['target_auc']:.0f} (seed 0). Random weights: no pretrained CLIP is obtainable offline.",
        "",
        "| backbone | input px | feature dim | probe in-family AUC | probe unseen AUC | encode + train s |",
        "|---|---|---|---|---|---|",
    ]
    for r in sweep["candidates"]:
        lines.append(
            f"| {r['clip']} | {r['image_size']} | {r['feature_dim']} | {100 * r['in_family_auc']:.1f} | "
            f"{100 * r['unseen_auc']:.1f} | {r['encode_and_train_s']:.0f} |"
        )
    lines += [
        "",
        f"Chosen: **{sweep['chosen'] or 'none reached the target; the last candidate is used'}** "
        f"(`{res['backbone']}`).",
        "",
        f"## Mean over unseen generators, mean ± std over {res['seeds']} seeds (%)",
        "",
        "Δ and p: paired over seeds against the linear probe (two-sided paired t-test). "
        "val AUC is in-family (the only thing a model could be selected on).",
        "",
        "| variant | val AUC | unseen acc | unseen AP | unseen AUC | Δ acc (p) | Δ AP (p) | kept dims |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in stats.items():
        mu = row["mean_unseen"]
        vs = row.get("vs_reference")
        d = (
            " | ".join(f"{100 * vs[m]['delta']:+.1f} ({vs[m]['p']:.2f})" for m in ("acc", "ap"))
            if vs
            else "reference | reference"
        )
        kept = [r["keep_fraction"] for r in res["results"][name] if r["keep_fraction"] is not None]
        kept_s = f"{100 * sum(kept) / len(kept):.0f}%" if kept else "-"
        lines.append(
            f"| {name} | {_f(row['val_auc'])} | {_f(mu['acc'])} | {_f(mu['ap'])} | {_f(mu['auc'])} | {d} | {kept_s} |"
        )
    causal = stats["causal"]["vs_reference"]
    met = (
        causal["acc"]["delta"] >= 0.05
        and causal["ap"]["delta"] >= 0.03
        and causal["acc"]["p"] < 0.05
        and causal["ap"]["p"] < 0.05
    )
    lines += [
        "",
        f"Target (the paper's direction): causal >= probe + 5 acc and + 3 AP, significant over seeds: "
        f"**{'met' if met else 'not met'}** (Δ acc {100 * causal['acc']['delta']:+.1f}, p {causal['acc']['p']:.2f}; "
        f"Δ AP {100 * causal['ap']['delta']:+.1f}, p {causal['ap']['p']:.2f}).",
        "",
        "## Per generator, mean ± std over seeds (%)",
        "",
        "| generator | seen | variant | acc | AP | AUC |",
        "|---|---|---|---|---|---|",
    ]
    seen = set(res["results"]["causal"][0]["seen"])
    for g in stats["causal"]["generators"]:
        for name in ("causal", REFERENCE, "prompt (CoOp)"):
            if name not in stats:
                continue
            r = stats[name]["generators"][g]
            lines.append(
                f"| {g} | {'train' if g in seen else 'unseen'} | {name} | {_f(r['acc'])} | {_f(r['ap'])} | "
                f"{_f(r['auc'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victims", nargs="+", default=["tiny-vit-64", "ViT-B-32", "ViT-B-16"])
    ap.add_argument("--target-auc", type=float, default=0.75)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--variants", nargs="+", default=None, help=f"subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/generalisation"))
    ap.add_argument("--out", type=Path, default=RESULTS / "embedded_generalisation")
    args = ap.parse_args(argv)
    sweep = victim_sweep(args.workdir, args.victims, args.target_auc, args.epochs)
    clip = sweep["chosen"] or args.victims[-1]
    names = list(dict.fromkeys(["causal", REFERENCE, *(args.variants or VARIANTS)]))  # the test needs both
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    variants = {k: VARIANTS[k] for k in names}
    res = run_seeds(args.workdir, clip, args.seeds, variants, args.epochs)
    stats = seed_statistics(res, REFERENCE)
    command = command_line("benchmarks.embedded_generalisation", argv)
    env = environment()
    write_result(
        args.out,
        {"command": command, "environment": env, "victim_sweep": sweep, **res, "statistics": stats},
        markdown(sweep, res, stats, command, env),
    )


if __name__ == "__main__":
    main()
